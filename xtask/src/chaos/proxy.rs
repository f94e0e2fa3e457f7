//! A TCP proxy the chaos suite controls: the stable address of "the Redis primary" (what a
//! Sentinel-managed VIP or DNS name is in production). [`Proxy::switch`] points it at another
//! server and cuts every open connection, so the clients reconnect to the new one.
//!
//! Hand-written on std threads (a few dozen lines) rather than a crate: it only copies bytes
//! both ways and must be switched and cut on command, which is the part the crates hide.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

/// A running proxy; stopped when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    backend: Mutex<SocketAddr>,
    open: Mutex<Vec<TcpStream>>,
    stopped: AtomicBool,
}

impl Proxy {
    /// Listen on a free 127.0.0.1 port and forward to `backend`.
    pub fn start(backend: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            backend: Mutex::new(backend),
            open: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        thread::spawn(move || accept(&listener, &accepting));
        Ok(Proxy { addr, shared })
    }

    /// `redis://` URL of the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Forward new connections to `backend` and cut every open one.
    pub fn switch(&self, backend: SocketAddr) {
        *self
            .shared
            .backend
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = backend;
        self.shared.cut_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.cut_all();
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

impl Shared {
    fn cut_all(&self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        for s in open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let backend = *shared
            .backend
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Ok(server) = TcpStream::connect(backend) else {
            continue;
        };
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        shared
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([c3, s3]);
        thread::spawn(move || pipe(client, server));
        thread::spawn(move || pipe(s2, c2));
    }
}

/// Copy `from` to `to` until either side closes, then close both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
