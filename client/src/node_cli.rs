//! `tidepool node ...` (run a node daemon) and `tidepool dm ...` (a DM application
//! on the command line: sessions, dispositions, printing and answering events).
//! Compiled into the `tidepool` binary; lines printed by `dm listen` are meant to be
//! read by people and by the integration tests alike:
//!
//! ```text
//! SESSION sid=3145729 node=3 reclaimed=false
//! READY
//! EVENT type=read token=5 sequence=1 source_node=4 sid=3145729 ino=7 offset=0 length=4096
//! RESPONDED token=5 response=continue
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dmapi::event::{DmEvent, EventBody};
use dmapi::types::{
    DmAttrName, DmHandle, DmMsgType, DmResponse, DmSessId, DmToken, EventSet, EventType, FsId, NodeId, DM_EV_WAIT,
};
use libdmapi::Dm;
use node::config::NodeConfig;
use node::daemon::Node;

/// `tidepool node ...`
#[derive(Subcommand)]
pub enum NodeCmd {
    /// Run this node's daemon until killed.
    Run(RunArgs),
    /// Print a running node's status.
    Status {
        /// The node's local API socket.
        #[arg(long, default_value = "/tmp/tidepool-node-1.sock")]
        socket: PathBuf,
    },
}

/// `tidepool node run`
#[derive(Args)]
pub struct RunArgs {
    /// TOML configuration (see `node::config`); defaults make a one-node cluster.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override `node_id`.
    #[arg(long)]
    node_id: Option<u32>,
    /// Override `listen`.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Override `api_socket`.
    #[arg(long)]
    api_socket: Option<PathBuf>,
}

/// Runs a `tidepool node` command.
pub fn node(cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Run(a) => {
            let mut cfg = match &a.config {
                Some(p) => NodeConfig::load(p)?,
                None => NodeConfig::default(),
            };
            if let Some(n) = a.node_id {
                cfg.node_id = n;
            }
            if let Some(l) = a.listen {
                cfg.listen = l;
            }
            if let Some(s) = a.api_socket {
                cfg.api_socket = Some(s);
            }
            let path = cfg.api_socket_path();
            let node = Node::start(cfg).context("starting the node daemon")?;
            node::api::serve(node.clone(), &path).context("serving the local API")?;
            eprintln!("node {} running; local API at {}", node.id(), path.display());
            // SIGTERM or SIGINT: unmount what the node hosts, then exit.
            crate::wait_for_signal();
            eprintln!("node {} stopping", node.id());
            node.shutdown();
            Ok(())
        }
        NodeCmd::Status { socket } => {
            let s = Dm::connect(&socket).with_context(|| format!("connecting to {}", socket.display()))?.status()?;
            println!("node {}", s.node);
            println!("session manager: {}", s.session_manager);
            println!("manages file systems: {:?}", s.fs_managed);
            println!("mounts: {:?}", s.mounts);
            println!("disposition table version: {}", s.disp_version);
            println!("peers alive: {:?}", s.peers_up);
            println!("peers reached over RDMA: {:?}", s.peers_rdma);
            println!("serves metadata of file systems: {:?}", s.meta_served);
            for m in &s.fuse {
                println!("fuse mount of file system {} on {}: {}", m.fs, m.path, m.state);
            }
            for (sid, node, info) in s.sessions {
                println!("session {sid} on node {node}: {}", String::from_utf8_lossy(&info));
            }
            Ok(())
        }
    }
}

/// `tidepool dm ...`
#[derive(Args)]
pub struct DmArgs {
    /// The local node's API socket.
    #[arg(long, default_value = "/tmp/tidepool-node-1.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: DmCmd,
}

#[derive(Subcommand)]
enum DmCmd {
    /// dm_create_session; prints the session id.
    CreateSession {
        #[arg(long, default_value = "tidepool-dm")]
        info: String,
        /// Reclaim this old session id instead of creating one.
        #[arg(long)]
        oldsid: Option<i32>,
    },
    /// dm_getall_sessions with each session's info.
    Sessions,
    /// dm_query_session.
    Query {
        #[arg(long)]
        sid: i32,
    },
    /// dm_destroy_session.
    Destroy {
        #[arg(long)]
        sid: i32,
    },
    /// dm_set_disp (and, unless --no-eventlist, add the events to the fs event list).
    SetDisp {
        #[arg(long)]
        sid: i32,
        #[arg(long)]
        fs: u64,
        /// Comma-separated event names: read,write,truncate,create,remove,rename...
        #[arg(long)]
        events: String,
        #[arg(long)]
        no_eventlist: bool,
    },
    /// dm_getall_disp.
    Disp {
        #[arg(long)]
        sid: i32,
    },
    /// dm_getall_tokens.
    Tokens {
        #[arg(long)]
        sid: i32,
    },
    /// dm_find_eventmsg.
    Find {
        #[arg(long)]
        sid: i32,
        #[arg(long)]
        token: i32,
    },
    /// dm_get_events without waiting; prints what is queued.
    Get {
        #[arg(long)]
        sid: i32,
    },
    /// dm_respond_event: CONTINUE, or ABORT with --abort ERRNO.
    Respond {
        #[arg(long)]
        sid: i32,
        #[arg(long)]
        token: i32,
        #[arg(long)]
        abort: Option<i32>,
    },
    /// dm_move_event.
    Move {
        #[arg(long)]
        sid: i32,
        #[arg(long)]
        token: i32,
        #[arg(long)]
        target: i32,
    },
    /// dm_send_msg (a user event) to a session on any node.
    SendMsg {
        #[arg(long)]
        sid: i32,
        #[arg(long)]
        sync: bool,
        data: String,
    },
    /// A DM application: create (or reclaim) a session, set dispositions, print
    /// events as they arrive and answer them.
    Listen(ListenArgs),
}

#[derive(Args)]
struct ListenArgs {
    /// Session info string (also how a restarted application finds its session).
    #[arg(long, default_value = "tidepool-dm")]
    info: String,
    /// Reclaim this node's session with the same info if the registry has one,
    /// waiting up to --reclaim-wait-ms for it; otherwise create a new session.
    #[arg(long)]
    reclaim: bool,
    #[arg(long, default_value_t = 5000)]
    reclaim_wait_ms: u64,
    /// File system for --events.
    #[arg(long, default_value_t = 1)]
    fs: u64,
    /// Events to dispose to this session (comma-separated); none: keep what it has.
    #[arg(long)]
    events: Option<String>,
    /// Answer events of TYPE with ABORT and ERRNO (TYPE=ERRNO, repeatable); others
    /// get CONTINUE.
    #[arg(long)]
    abort: Vec<String>,
    /// Print events but never answer them (they stay outstanding).
    #[arg(long)]
    hold: bool,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Print no line per event (benchmarks: the answer is all that counts);
    /// at exit (SIGTERM, or --count reached) print `ANSWERED n`.
    #[arg(long)]
    quiet: bool,
    /// Destroy events of --fs carry a copy of this DM attribute
    /// (`dm_set_return_on_destroy`).
    #[arg(long)]
    return_on_destroy: Option<String>,
}

/// Parses `read,write,...` into an event set.
pub fn parse_events(s: &str) -> anyhow::Result<EventSet> {
    let mut set = EventSet::EMPTY;
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        set.insert(parse_event(name)?);
    }
    Ok(set)
}

/// Parses one event name (`read`, `postcreate`...).
pub fn parse_event(name: &str) -> anyhow::Result<EventType> {
    EventType::ALL
        .iter()
        .copied()
        .find(|t| event_name(*t) == name.to_ascii_lowercase())
        .with_context(|| format!("unknown event type {name:?}"))
}

/// The lower-case name of an event type.
pub fn event_name(t: EventType) -> String {
    format!("{t:?}").to_ascii_lowercase()
}

fn set_names(s: EventSet) -> String {
    s.iter().map(event_name).collect::<Vec<_>>().join(",")
}

/// One line describing an event, as `dm listen` prints it.
pub fn describe(sid: DmSessId, e: &DmEvent) -> String {
    let mut line = format!(
        "EVENT type={} token={} sequence={} source_node={} sid={}",
        event_name(e.ev_type),
        e.token,
        e.sequence,
        e.source,
        sid
    );
    match &e.body {
        EventBody::Data { handle, offset, length } => {
            line += &format!(" ino={} offset={offset} length={length}", handle.ino().unwrap_or(0));
        }
        EventBody::Namespace { name1, name2, handle1, retcode, .. } => {
            line += &format!(" name1={} name2={}", String::from_utf8_lossy(name1), String::from_utf8_lossy(name2));
            let ino = handle1.and_then(|h| h.ino().ok()).unwrap_or(0);
            line += &format!(" ino1={ino} retcode={retcode}");
        }
        EventBody::Mount { mountpoint_path, media, .. } => {
            line +=
                &format!(" path={} media={}", String::from_utf8_lossy(mountpoint_path), String::from_utf8_lossy(media));
        }
        EventBody::Destroy { handle, attrname, attrcopy } => {
            let n = &attrname.an_chars[..attrname.an_chars.iter().position(|&c| c == 0).unwrap_or(8)];
            line += &format!(
                " ino={} attrname={} attrcopy={}",
                handle.ino().unwrap_or(0),
                String::from_utf8_lossy(n),
                String::from_utf8_lossy(attrcopy)
            );
        }
        EventBody::Cancel { sequence, token } => {
            line += &format!(" cancelled_sequence={sequence} cancelled_token={token}")
        }
        EventBody::User { data } => line += &format!(" data={}", String::from_utf8_lossy(data)),
    }
    line
}

fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    // A closed pipe ends the listener at its next event; nothing to report here.
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// Runs a `tidepool dm` command.
pub fn dm(a: DmArgs) -> anyhow::Result<()> {
    let dm = Dm::connect(&a.socket).with_context(|| format!("connecting to node at {}", a.socket.display()))?;
    match a.cmd {
        DmCmd::CreateSession { info, oldsid } => {
            let sid = dm.dm_create_session(DmSessId(oldsid.unwrap_or(0)), info.as_bytes())?;
            out(&format!("SESSION sid={sid}"));
        }
        DmCmd::Sessions => {
            for sid in dm.dm_getall_sessions(4096)? {
                let info = dm.dm_query_session(sid)?;
                let node = sid.node().map_or(0, |n| n.0);
                out(&format!("SESSION sid={sid} node={node} info={}", String::from_utf8_lossy(&info)));
            }
        }
        DmCmd::Query { sid } => {
            out(&format!("INFO {}", String::from_utf8_lossy(&dm.dm_query_session(DmSessId(sid))?)));
        }
        DmCmd::Destroy { sid } => {
            dm.dm_destroy_session(DmSessId(sid))?;
            out("DESTROYED");
        }
        DmCmd::SetDisp { sid, fs, events, no_eventlist } => {
            set_disp(&dm, DmSessId(sid), FsId(fs), parse_events(&events)?, !no_eventlist)?;
            out("OK");
        }
        DmCmd::Disp { sid } => {
            for (h, s) in dm.dm_getall_disp(DmSessId(sid))? {
                out(&format!("DISP fs={} events={}", h.fsid().0, set_names(s)));
            }
        }
        DmCmd::Tokens { sid } => {
            let t: Vec<String> = dm.dm_getall_tokens(DmSessId(sid), 65536)?.iter().map(|t| t.to_string()).collect();
            out(&format!("TOKENS {}", t.join(",")));
        }
        DmCmd::Find { sid, token } => {
            let buf = dm.dm_find_eventmsg(DmSessId(sid), DmToken(token), 65536)?;
            for e in dmapi::event::parse_eventmsgs(&buf)? {
                out(&describe(DmSessId(sid), &e));
            }
        }
        DmCmd::Get { sid } => match dm.get_events(DmSessId(sid), 1024, 0, 1 << 20) {
            Ok(evs) => evs.iter().for_each(|e| out(&describe(DmSessId(sid), e))),
            Err(e) if e.errno() == libc::EAGAIN => out("NONE"),
            Err(e) => return Err(e.into()),
        },
        DmCmd::Respond { sid, token, abort } => {
            let r = abort.map_or(DmResponse::Continue, DmResponse::Abort);
            dm.dm_respond_event(DmSessId(sid), DmToken(token), r, &[])?;
            out("OK");
        }
        DmCmd::Move { sid, token, target } => {
            let t = dm.dm_move_event(DmSessId(sid), DmToken(token), DmSessId(target))?;
            out(&format!("MOVED token={t}"));
        }
        DmCmd::SendMsg { sid, sync, data } => {
            let t = if sync { DmMsgType::Sync } else { DmMsgType::Async };
            dm.dm_send_msg(DmSessId(sid), t, data.as_bytes())?;
            out("OK");
        }
        DmCmd::Listen(l) => listen(&dm, l)?,
    }
    Ok(())
}

fn set_disp(dm: &Dm, sid: DmSessId, fs: FsId, set: EventSet, eventlist: bool) -> anyhow::Result<()> {
    let h = DmHandle::fs(fs);
    dm.dm_set_disp(sid, &h, dmapi::types::DM_NO_TOKEN, set)?;
    if eventlist {
        let cur = dm.dm_get_eventlist(sid, &h, dmapi::types::DM_NO_TOKEN).unwrap_or(EventSet::EMPTY);
        dm.dm_set_eventlist(sid, &h, dmapi::types::DM_NO_TOKEN, EventSet(cur.0 | set.0))?;
    }
    Ok(())
}

fn find_own_session(dm: &Dm, me: NodeId, info: &[u8], wait: Duration) -> anyhow::Result<Option<DmSessId>> {
    let deadline = Instant::now() + wait;
    loop {
        for sid in dm.dm_getall_sessions(65536)? {
            if sid.node() == Some(me) && dm.dm_query_session(sid).is_ok_and(|i| i == info) {
                return Ok(Some(sid));
            }
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Events a quiet listener handled, for its report at SIGTERM.
static ANSWERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn listen(dm: &Dm, l: ListenArgs) -> anyhow::Result<()> {
    let me = NodeId(dm.status()?.node);
    let mut aborts = Vec::new();
    for a in &l.abort {
        let (t, e) = a.split_once('=').with_context(|| format!("--abort {a:?}: expected TYPE=ERRNO"))?;
        aborts.push((parse_event(t)?, e.parse::<i32>().with_context(|| format!("--abort {a:?}: bad errno"))?));
    }
    let old = if l.reclaim {
        find_own_session(dm, me, l.info.as_bytes(), Duration::from_millis(l.reclaim_wait_ms))?
    } else {
        None
    };
    let sid = dm.dm_create_session(old.unwrap_or(DmSessId(0)), l.info.as_bytes())?;
    out(&format!("SESSION sid={sid} node={me} reclaimed={}", old.is_some()));
    if let Some(ev) = &l.events {
        set_disp(dm, sid, FsId(l.fs), parse_events(ev)?, true)?;
    }
    if let Some(name) = &l.return_on_destroy {
        dm.dm_set_return_on_destroy(
            sid,
            &DmHandle::fs(FsId(l.fs)),
            dmapi::types::DM_NO_TOKEN,
            DmAttrName::new(name.as_bytes())?,
            true,
        )?;
    }
    if l.quiet {
        // The count is all a quiet listener says; SIGTERM makes it say it.
        std::thread::spawn(|| {
            crate::wait_for_signal();
            out(&format!("ANSWERED {}", ANSWERED.load(std::sync::atomic::Ordering::Relaxed)));
            std::process::exit(0);
        });
    }
    out("READY");
    let mut seen = 0u64;
    let dm = Arc::new(dm);
    loop {
        let evs = match dm.get_events(sid, 64, DM_EV_WAIT, 1 << 20) {
            Ok(v) => v,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => bail!("dm_get_events: {e}"),
        };
        for e in evs {
            if !l.quiet {
                out(&describe(sid, &e));
            }
            if e.token.0 > 0 && !l.hold {
                let r = aborts
                    .iter()
                    .find(|(t, _)| *t == e.ev_type)
                    .map_or(DmResponse::Continue, |(_, n)| DmResponse::Abort(*n));
                dm.dm_respond_event(sid, e.token, r, &[])?;
                let name = match r {
                    DmResponse::Abort(n) => format!("abort:{n}"),
                    _ => "continue".into(),
                };
                if !l.quiet {
                    out(&format!("RESPONDED token={} response={name}", e.token));
                }
            }
            seen += 1;
            ANSWERED.store(seen, std::sync::atomic::Ordering::Relaxed);
            if l.count.is_some_and(|c| seen >= c) {
                if l.quiet {
                    out(&format!("ANSWERED {seen}"));
                }
                return Ok(());
            }
        }
    }
}
