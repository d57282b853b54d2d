//! One HTTP/1.1 request to an agent, over its control socket or TCP (hyper's client; the
//! commands make one request each, so a connection per request is all they need).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, anyhow};
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;

use super::token::Token;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Where an agent answers.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// Its control socket: every endpoint, for root and the agent's user.
    Socket(PathBuf),
    /// Its TCP listener (`http://HOST:PORT`); the token, when given, is sent as a bearer.
    Tcp { url: String, token: Option<Token> },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Socket(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp { url, .. } => f.write_str(url),
        }
    }
}

pub struct Answer {
    pub status: hyper::StatusCode,
    pub body: Bytes,
}

/// Why a request got no answer.
pub enum Failure {
    /// Nothing to talk to (or not allowed to connect): the caller says how to find the agent.
    Connect(std::io::Error),
    Exchange(anyhow::Error),
}

impl Endpoint {
    /// `METHOD PATH` (PATH with its query) with an empty body; the whole answer.
    pub fn request(&self, method: &str, path: &str) -> Result<Answer, Failure> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| Failure::Exchange(err.into()))?;
        runtime.block_on(async {
            match tokio::time::timeout(TIMEOUT, self.exchange(method, path)).await {
                Ok(answer) => answer,
                Err(_) => Err(Failure::Exchange(anyhow!("the agent did not answer within {} s", TIMEOUT.as_secs()))),
            }
        })
    }

    async fn exchange(&self, method: &str, path: &str) -> Result<Answer, Failure> {
        let mut request = Request::builder().method(method);
        let (uri, host) = match self {
            Endpoint::Socket(socket) => {
                let stream = tokio::net::UnixStream::connect(socket).await.map_err(Failure::Connect)?;
                request = request.header(hyper::header::HOST, "localhost");
                return send(stream, request.uri(path)).await;
            }
            Endpoint::Tcp { url, token } => {
                let (authority, prefix) = split_url(url).map_err(Failure::Exchange)?;
                if let Some(token) = token {
                    request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {}", token.as_str()));
                }
                (format!("{prefix}{path}"), authority)
            }
        };
        let stream = tokio::net::TcpStream::connect(&host).await.map_err(Failure::Connect)?;
        send(stream, request.uri(uri).header(hyper::header::HOST, host)).await
    }
}

async fn send<S>(stream: S, request: hyper::http::request::Builder) -> Result<Answer, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let exchange = async {
        let request = request.body(Empty::<Bytes>::new()).context("building the request")?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("talking to the agent")?;
        let connection = tokio::spawn(connection);
        let response = sender.send_request(request).await.context("sending the request")?;
        let status = response.status();
        let body = response.into_body().collect().await.context("reading the agent's answer")?.to_bytes();
        drop(sender);
        let _ = connection.await;
        Ok(Answer { status, body })
    };
    exchange.await.map_err(Failure::Exchange)
}

/// `http://HOST:PORT[/PREFIX]` → (HOST:PORT, /PREFIX without a trailing slash).
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        anyhow!("--agent {url}: expected http://HOST:PORT (for the control socket, use --control-socket PATH)")
    })?;
    let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let prefix = prefix.trim_end_matches('/');
    Ok((authority.to_string(), if prefix.is_empty() { String::new() } else { format!("/{prefix}") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_prefix() {
        assert_eq!(split_url("http://127.0.0.1:9464").unwrap(), ("127.0.0.1:9464".into(), "".into()));
        assert_eq!(split_url("http://127.0.0.1:9464/").unwrap(), ("127.0.0.1:9464".into(), "".into()));
        assert_eq!(split_url("http://host:1/memmon/").unwrap(), ("host:1".into(), "/memmon".into()));
        assert!(split_url("https://host:1").unwrap_err().to_string().contains("--control-socket"));
    }
}
