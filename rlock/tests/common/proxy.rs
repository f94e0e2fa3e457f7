//! A TCP proxy the test controls, for a silent failover: existing connections go quiet (the
//! proxy keeps reading and answers nothing, as a frozen primary whose kernel still
//! acknowledges), while new connections reach another server (the promoted replica).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

struct State {
    upstream: AtomicU16,
    generation: AtomicU64,
    stop: AtomicBool,
}

/// The proxy; stops accepting on drop.
pub struct FreezingProxy {
    port: u16,
    state: Arc<State>,
}

impl FreezingProxy {
    /// Listen on a free loopback port and forward to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(State {
            upstream: AtomicU16::new(upstream),
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&state);
        thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::Acquire) {
                    return;
                }
                if let Ok(client) = client {
                    connect(client, &accepting);
                }
            }
        });
        FreezingProxy { port, state }
    }

    /// `redis://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Silence every open connection and send new ones to `127.0.0.1:upstream`.
    pub fn freeze_and_switch(&self, upstream: u16) {
        self.state.upstream.store(upstream, Ordering::Release);
        self.state.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn connect(client: TcpStream, state: &Arc<State>) {
    let generation = state.generation.load(Ordering::Acquire);
    let upstream = state.upstream.load(Ordering::Acquire);
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    for (from, to) in [(&client, &server), (&server, &client)] {
        let (from, to) = (
            from.try_clone().expect("clone"),
            to.try_clone().expect("clone"),
        );
        let state = Arc::clone(state);
        thread::spawn(move || pump(from, to, &state, generation));
    }
}

/// Copy `from` to `to` while this connection's generation is current; afterwards read and
/// drop (the peer sees a live socket that never answers).
fn pump(mut from: TcpStream, mut to: TcpStream, state: &State, generation: u64) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16 * 1024];
    while !state.stop.load(Ordering::Acquire) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if state.generation.load(Ordering::Acquire) == generation
                    && to.write_all(&buf[..n]).is_err()
                {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}
