//! Who may do what over the control API, and the audit trail of what they did.
//!
//! - The control socket serves every endpoint, to root and the agent's own user only (the
//!   peer's uid from SO_PEERCRED; the socket's 0600 mode already keeps others from
//!   connecting, this holds even for a peer that could bypass file permissions).
//! - TCP serves `/metrics` and `/health` to anyone (Prometheus, load balancers); everything
//!   else — state changes, profiles and the views of the targets' stacks — only with the bearer
//!   token from MEMMON_API_TOKEN_FILE: 401 without it or with a wrong one, 403 (use the socket)
//!   when the agent has no token.
//! - Every state change and profile download is logged as an `audit:` line naming the caller,
//!   refused or not.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{
    extract::{ConnectInfo, Request, State, connect_info::Connected},
    serve::IncomingStream,
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::Response,
};
use tokio::net::UnixListener;

use crate::control::token::Token;

/// The log target of audit lines: shown at the default log level (see main.rs).
pub const AUDIT_TARGET: &str = "memmon::audit";

/// What the agent needs to decide.
#[derive(Clone)]
pub struct Access {
    /// The agent's effective uid: its own user may use the socket, as root may.
    pub agent_uid: u32,
    pub token: Option<Arc<Token>>,
    /// For the messages that send TCP callers to the socket.
    pub socket: PathBuf,
}

/// A socket peer's kernel credentials (SO_PEERCRED, taken when it connected).
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// None when the kernel would not say: such a peer is refused.
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(credentials) => Peer { uid: Some(credentials.uid()), pid: credentials.pid() },
            Err(err) => {
                log::warn!("control socket: no peer credentials ({err}); refusing the connection's requests");
                Peer { uid: None, pid: None }
            }
        }
    }
}

/// The caller, as an audit line names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Peer { uid: Option<u32>, pid: Option<i32> },
    Tcp { remote: SocketAddr, token: Bearer },
}

/// What a TCP request's Authorization header holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bearer {
    Absent,
    Wrong,
    Valid,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Peer { uid, pid } => {
                match uid {
                    Some(uid) => write!(f, "uid={uid}")?,
                    None => f.write_str("uid=unknown")?,
                }
                if let Some(pid) = pid {
                    write!(f, " pid={pid}")?;
                }
                f.write_str(" via=socket")
            }
            Caller::Tcp { remote, token } => {
                let token = match token {
                    Bearer::Valid => "token",
                    Bearer::Wrong => "wrong-token",
                    Bearer::Absent => "no-token",
                };
                write!(f, "{token} from={remote} via=tcp")
            }
        }
    }
}

/// Served on TCP without a token: what Prometheus and health checks need.
pub fn open_on_tcp(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && matches!(path, "/metrics" | "/health")
}

/// The request's action when it is one the audit log records: a state change or a profile
/// download.
pub fn audited_action(method: &Method, path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let action = match (method, segments.as_slice()) {
        (&Method::POST, ["profiles"]) => "start-profiling".to_string(),
        (&Method::POST, ["profiles", "cleanup"]) => "cleanup-profiles".to_string(),
        (&Method::POST, ["profiles", id, "stop"]) => format!("stop-profiling profile={id}"),
        (&Method::POST, ["update-metrics"]) => "update-metrics".to_string(),
        (&Method::GET, ["profiles", id, "pprof"]) => format!("download-profile profile={id}"),
        (&Method::POST, _) => format!("POST {path}"),
        _ => return None,
    };
    Some(action)
}

/// The decision for one request: Ok, or the refusal's status and actionable message.
pub fn decide(access: &Access, caller: &Caller, method: &Method, path: &str) -> Result<(), (StatusCode, String)> {
    match caller {
        Caller::Peer { uid: Some(uid), .. } if *uid == 0 || *uid == access.agent_uid => Ok(()),
        Caller::Peer { uid, .. } => Err((
            StatusCode::FORBIDDEN,
            format!(
                "uid {} may not drive this agent: its control socket is for root and uid {}",
                uid.map_or("unknown".to_string(), |u| u.to_string()),
                access.agent_uid
            ),
        )),
        Caller::Tcp { .. } if open_on_tcp(method, path) => Ok(()),
        Caller::Tcp { token: Bearer::Valid, .. } => Ok(()),
        Caller::Tcp { .. } if access.token.is_none() => Err((
            StatusCode::FORBIDDEN,
            format!(
                "{method} {path} is not served over TCP without a token: use the control socket {} \
                 (the memmon commands do by default), or start the agent with MEMMON_API_TOKEN_FILE \
                 and send `Authorization: Bearer TOKEN`; TCP serves /metrics and /health to anyone",
                access.socket.display()
            ),
        )),
        Caller::Tcp { token: Bearer::Absent, .. } => Err((
            StatusCode::UNAUTHORIZED,
            format!("{method} {path} needs `Authorization: Bearer TOKEN` (the agent's MEMMON_API_TOKEN_FILE) or the control socket"),
        )),
        Caller::Tcp { .. } => Err((StatusCode::UNAUTHORIZED, "wrong token (the agent's MEMMON_API_TOKEN_FILE)".to_string())),
    }
}

/// What the Authorization header says about the agent's token.
fn bearer(access: &Access, headers: &HeaderMap) -> Bearer {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Bearer::Absent };
    let given = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    match (&access.token, given) {
        (Some(token), Some(given)) if token.matches(given.trim()) => Bearer::Valid,
        _ => Bearer::Wrong,
    }
}

/// The TCP listener's gate.
pub async fn guard_tcp(
    State(access): State<Access>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let caller = Caller::Tcp { remote, token: bearer(&access, request.headers()) };
    guard(&access, caller, request, next).await
}

/// The control socket's gate.
pub async fn guard_socket(State(access): State<Access>, ConnectInfo(peer): ConnectInfo<Peer>, request: Request, next: Next) -> Response {
    guard(&access, Caller::Peer { uid: peer.uid, pid: peer.pid }, request, next).await
}

/// Extra words for the audit line, set by a handler on its response (the new profile's id).
#[derive(Clone)]
pub struct AuditNote(pub String);

async fn guard(access: &Access, caller: Caller, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let action = audited_action(&method, &path);
    let response = match decide(access, &caller, &method, &path) {
        Ok(()) => next.run(request).await,
        Err((status, message)) => {
            let mut response = super::api::error(status, message);
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            }
            response
        }
    };
    if let Some(action) = action {
        let status = response.status();
        let outcome = if status.is_success() { "done" } else { "refused" };
        let note = response.extensions().get::<AuditNote>().map(|n| format!(" {}", n.0)).unwrap_or_default();
        log::info!(target: AUDIT_TARGET, "audit: {outcome} {action} by {caller} status={}{note}", status.as_u16());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(token: bool) -> Access {
        Access {
            agent_uid: 998,
            token: token.then(|| Arc::new(Token::parse("0123456789abcdef0123").unwrap())),
            socket: PathBuf::from("/run/memmon/control-9464.sock"),
        }
    }

    fn tcp(token: Bearer) -> Caller {
        Caller::Tcp { remote: "127.0.0.1:5555".parse().unwrap(), token }
    }

    #[test]
    fn the_socket_is_for_root_and_the_agents_user() {
        let peer = |uid| Caller::Peer { uid, pid: Some(1) };
        assert!(decide(&access(false), &peer(Some(0)), &Method::POST, "/profiles").is_ok());
        assert!(decide(&access(false), &peer(Some(998)), &Method::POST, "/profiles").is_ok());
        for uid in [Some(65534), Some(1000), None] {
            let (status, message) = decide(&access(true), &peer(uid), &Method::GET, "/status").unwrap_err();
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(message.contains("root and uid 998"), "{message}");
        }
    }

    #[test]
    fn tcp_serves_metrics_and_health_and_the_rest_only_with_the_token() {
        for (method, path) in [(Method::GET, "/metrics"), (Method::GET, "/health"), (Method::HEAD, "/metrics")] {
            assert!(decide(&access(false), &tcp(Bearer::Absent), &method, path).is_ok(), "{method} {path}");
        }
        for (method, path) in [
            (Method::POST, "/profiles"),
            (Method::POST, "/profiles/cleanup"),
            (Method::POST, "/update-metrics"),
            (Method::GET, "/profiles/x/pprof"),
            (Method::GET, "/profiles"),
            (Method::GET, "/leaks"),
            (Method::GET, "/status"),
            (Method::POST, "/metrics"),
            (Method::GET, "/no-such-thing"),
        ] {
            let (status, message) = decide(&access(false), &tcp(Bearer::Absent), &method, path).unwrap_err();
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
            assert!(message.contains("/run/memmon/control-9464.sock") && message.contains("MEMMON_API_TOKEN_FILE"), "{message}");
            assert_eq!(decide(&access(true), &tcp(Bearer::Absent), &method, path).unwrap_err().0, StatusCode::UNAUTHORIZED);
            assert_eq!(decide(&access(true), &tcp(Bearer::Wrong), &method, path).unwrap_err().0, StatusCode::UNAUTHORIZED);
            assert!(decide(&access(true), &tcp(Bearer::Valid), &method, path).is_ok());
        }
    }

    #[test]
    fn bearer_headers_are_checked_against_the_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&access(true), &headers), Bearer::Absent);
        headers.insert(header::AUTHORIZATION, "Bearer 0123456789abcdef0123".parse().unwrap());
        assert_eq!(bearer(&access(true), &headers), Bearer::Valid);
        assert_eq!(bearer(&access(false), &headers), Bearer::Wrong, "no token configured: nothing is valid");
        headers.insert(header::AUTHORIZATION, "Bearer 0123456789abcdef0124".parse().unwrap());
        assert_eq!(bearer(&access(true), &headers), Bearer::Wrong);
        headers.insert(header::AUTHORIZATION, "Basic 0123456789abcdef0123".parse().unwrap());
        assert_eq!(bearer(&access(true), &headers), Bearer::Wrong);
    }

    #[test]
    fn audited_actions_are_the_state_changes_and_downloads() {
        assert_eq!(audited_action(&Method::POST, "/profiles").as_deref(), Some("start-profiling"));
        assert_eq!(audited_action(&Method::POST, "/profiles/ID/stop").as_deref(), Some("stop-profiling profile=ID"));
        assert_eq!(audited_action(&Method::POST, "/profiles/cleanup").as_deref(), Some("cleanup-profiles"));
        assert_eq!(audited_action(&Method::POST, "/update-metrics").as_deref(), Some("update-metrics"));
        assert_eq!(audited_action(&Method::GET, "/profiles/ID/pprof").as_deref(), Some("download-profile profile=ID"));
        assert_eq!(audited_action(&Method::GET, "/status"), None);
        assert_eq!(audited_action(&Method::GET, "/profiles"), None);
    }

    #[test]
    fn callers_are_named_for_the_audit_log() {
        assert_eq!(Caller::Peer { uid: Some(0), pid: Some(42) }.to_string(), "uid=0 pid=42 via=socket");
        assert_eq!(tcp(Bearer::Valid).to_string(), "token from=127.0.0.1:5555 via=tcp");
        assert_eq!(tcp(Bearer::Absent).to_string(), "no-token from=127.0.0.1:5555 via=tcp");
    }
}
