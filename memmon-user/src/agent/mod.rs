//! `memmon agent`: attach, snapshot every MEMMON_METRICS_UPDATE_INTERVAL, check for leaks
//! every MEMMON_LEAK_CHECK_INTERVAL, serve the control API on MEMMON_LISTEN, and print a live
//! report, until SIGINT/SIGTERM or `--duration`.

mod access;
mod api;
mod metrics;
pub mod requests;
pub mod report;
pub mod state;

use std::{thread, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::oneshot,
    time::{Instant, MissedTickBehavior, interval_at, sleep_until},
};

use crate::{
    config::AgentConfig,
    privileges,
    control::{
        socket::{self, ControlSocket},
        token::Token,
    },
};
use state::Agent;

type Job = Box<dyn FnOnce(&mut Agent) + Send>;

/// The agent lives on a thread of its own (blazesym's symbolizer cannot move between threads);
/// the API and the timers hand it jobs and await the answers.
#[derive(Clone)]
pub struct Handle {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Handle {
    /// Starts the agent thread; returns once the targets are attached (or attaching failed).
    fn start(config: AgentConfig) -> Result<(Self, thread::JoinHandle<()>)> {
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        let (started, outcome) = std::sync::mpsc::channel();
        let thread = thread::Builder::new().name("memmon-agent".into()).spawn(move || {
            let keep = retained_capabilities(&config);
            let started_agent = Agent::start(config).and_then(|agent| {
                if let Some(keep) = keep {
                    privileges::drop_to(&keep).context("dropping capabilities after attaching")?;
                }
                Ok(agent)
            });
            let mut agent = match started_agent {
                Ok(agent) => {
                    let _ = started.send(Ok(()));
                    agent
                }
                Err(err) => {
                    let _ = started.send(Err(err));
                    return;
                }
            };
            for job in inbox {
                job(&mut agent);
            }
            // `agent` drops here, on its own thread: every probe is detached.
        })?;
        outcome.recv().map_err(|_| anyhow!("the agent thread died while attaching"))??;
        Ok((Self { jobs }, thread))
    }

    /// Runs `job` on the agent and returns its result.
    pub async fn with<R: Send + 'static>(&self, job: impl FnOnce(&mut Agent) -> R + Send + 'static) -> Result<R> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(move |agent: &mut Agent| {
                let _ = reply.send(job(agent));
            }))
            .map_err(|_| anyhow!("the agent has stopped"))?;
        answer.await.map_err(|_| anyhow!("the agent has stopped"))
    }
}

pub async fn run(config: AgentConfig) -> Result<()> {
    crate::tracer::preflight(&config.pids)?;
    config.validate()?;
    // Bind before attaching: a busy port must not leave probes behind.
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| {
        format!("cannot listen on {} (MEMMON_LISTEN / --listen)", config.listen)
    })?;
    let address = listener.local_addr()?;
    let token = match &config.api_token_file {
        Some(path) => Some(std::sync::Arc::new(Token::read(path)?)),
        None => None,
    };
    let socket_path = config.control_socket.clone().unwrap_or_else(|| socket::default_path(address.port()));
    let control_socket = ControlSocket::bind(&socket_path)?;
    let socket_listener = tokio::net::UnixListener::from_std(control_socket.listener.try_clone()?)?;
    // SAFETY: geteuid cannot fail.
    let access = access::Access { agent_uid: unsafe { libc::geteuid() }, token, socket: socket_path.clone() };
    let (agent, agent_thread) = Handle::start(config.clone())?;
    // The main thread only serves the API: it needs no capability at all.
    if config.drop_capabilities {
        privileges::drop_to(&[]).context("dropping capabilities after attaching")?;
    }
    let capabilities = agent.with(|_| privileges::effective().map(|set| privileges::names(&set))).await??;
    let attached = agent
        .with(|agent| {
            agent
                .tracer()
                .targets()
                .iter()
                .map(|target| {
                    let mut line = format!(
                        "memmon: attached to pid {} ({}): {} allocator in {}; probing {}",
                        target.process.pid,
                        target.process.comm,
                        target.allocator.name,
                        target.allocator.object(),
                        target.allocator.describe()
                    );
                    let stepped: Vec<&str> = target.allocator.single_stepped().map(|s| s.function.symbol).collect();
                    if !stepped.is_empty() {
                        line += &format!(
                            "\nmemmon: pid {}: single-stepped probes (the expensive kind; `memmon status` says why): {}",
                            target.process.pid,
                            stepped.join(", ")
                        );
                    }
                    line
                })
                .collect::<Vec<_>>()
        })
        .await?;
    for line in attached {
        eprintln!("{line}");
    }
    match config.tier {
        crate::config::Tier::Exact => eprintln!("memmon: tier exact: every allocation is tracked from now on"),
        crate::config::Tier::AlwaysOn => eprintln!(
            "memmon: tier always-on: no allocator probes until growth opens a capture window of {} s \
             (overhead budget {}% of the targets' CPU)",
            config.capture_window,
            config.overhead_budget * 100.0
        ),
    }
    eprintln!(
        "memmon: capabilities kept after attaching: {capabilities}{}",
        if config.drop_capabilities { "" } else { " (MEMMON_DROP_CAPABILITIES=false)" }
    );
    eprintln!(
        "memmon: control socket on {} (mode 0600: root and uid {})",
        socket_path.display(),
        access.agent_uid
    );
    eprintln!("memmon: control API on http://{address}");
    let server = tokio::spawn(api::serve(listener, socket_listener, agent.clone(), access));

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let far_future = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = config.duration.map_or(far_future, |d| Instant::now() + Duration::from_secs(d));
    let every = |period: Duration| {
        let mut ticks = interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    };
    let mut snapshots = every(config.metrics_update_period());
    let mut leak_checks = every(config.leak_check_period());
    let report_period = Duration::from_secs(config.report_interval.max(1));
    let mut reports = every(report_period);
    let mut liveness = every(Duration::from_millis(250));
    // Execs and new code mappings (dlopen) are one map read per target to notice; the sooner
    // the new mappings are known, the fewer allocations in new code have stacks cut short.
    let mut exec_checks = every(Duration::from_millis(20));
    let mut profile_ticks = every(Duration::from_millis(250));
    let mut targets_gone = false;

    let reason = loop {
        tokio::select! {
            _ = interrupt.recv() => break "interrupted",
            _ = terminate.recv() => break "terminated",
            _ = sleep_until(deadline) => break "duration reached",
            _ = snapshots.tick() => {
                if let Err(err) = agent.with(|agent| agent.refresh()).await? {
                    log::warn!("snapshot failed: {err:#}");
                }
            }
            _ = exec_checks.tick(), if !targets_gone => agent.with(|agent| agent.refresh_code_mappings()).await?,
            _ = leak_checks.tick() => agent.with(|agent| agent.check_leaks()).await?,
            _ = profile_ticks.tick() => agent.with(|agent| agent.tick_profiles()).await?,
            _ = reports.tick(), if config.report_interval > 0 && !targets_gone => {
                let text = agent.with(|agent| agent.refresh().map(|()| report::render(agent))).await??;
                print!("{text}");
            }
            _ = liveness.tick(), if !targets_gone => {
                let last_words = agent
                    .with(|agent| {
                        // Code mapped since the last look (dlopen) gets unwind tables within a tick.
                        agent.refresh_code_mappings();
                        agent.retire_children();
                        let gone = agent.tracer().targets().iter().all(|t| !t.process.is_alive());
                        gone.then(|| agent.refresh().map(|()| final_report(agent)))
                    })
                    .await?;
                if let Some(text) = last_words {
                    targets_gone = true;
                    println!("memmon: every target exited; final report (data stays available until memmon stops):");
                    print!("{}", text?);
                }
            }
        }
    };
    server.abort();
    let _ = server.await; // the server's handle on the agent goes with it
    let text = agent
        .with(move |agent| {
            agent.stop_all_profiling("the agent stopped");
            let refreshed = if targets_gone { Ok(()) } else { agent.refresh() };
            refreshed.map(|()| final_report(agent))
        })
        .await??;
    println!("memmon: stopping ({reason}); final report:");
    print!("{text}");
    drop(agent); // the last handle: the agent thread ends and detaches every probe
    let _ = agent_thread.join();
    drop(control_socket);
    eprintln!("memmon: probes detached");
    Ok(())
}

/// The capabilities the agent thread keeps once attached; None keeps them all.
fn retained_capabilities(config: &AgentConfig) -> Option<Vec<caps::Capability>> {
    if !config.drop_capabilities {
        return None;
    }
    Some(privileges::retained().into_iter().map(|(cap, _why)| cap).collect())
}

fn final_report(agent: &mut Agent) -> String {
    let mut text = report::render(agent);
    if let Some(line) = report::largest_site_line(agent) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}
