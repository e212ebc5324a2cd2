//! A TCP link between test processes that can be cut: a proxy on
//! 127.0.0.1 that forwards to a target, and while cut forwards nothing
//! (data waits, as packets would in a partition that TCP retries through)
//! without closing anything. Network namespaces would need root; this
//! works everywhere, for one direction of one port: other traffic, such
//! as gossip, still flows, so the cut side looks healthy in the ring.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Shared {
    target: Mutex<Option<String>>,
    cut: AtomicBool,
    closing: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
}

/// A cuttable proxy; stops and closes its connections when dropped.
pub struct Link {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Link {
    /// Listens on a free 127.0.0.1 port; connections made before
    /// [`Self::set_target`] are closed at once.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept(&listener, &shared))
        };
        Self {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Forwards to `addr` (`host:port`) from now on.
    pub fn set_target(&self, addr: &str) {
        *self.shared.target.lock().unwrap() = Some(addr.to_owned());
    }

    /// Stops forwarding, both ways, on every connection, old and new.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again, starting with what waited.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("port", &self.port)
            .field("cut", &self.shared.cut.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        for stream in self.shared.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.closing.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(_) => return,
        };
        let target = shared.target.lock().unwrap().clone();
        let Some(server) = target.and_then(|target| TcpStream::connect(target).ok()) else {
            continue; // dropping `client` closes it
        };
        let _ = client.set_nonblocking(false);
        let mut streams = shared.streams.lock().unwrap();
        if let (Ok(c1), Ok(c2), Ok(s1), Ok(s2)) = (
            client.try_clone(),
            client.try_clone(),
            server.try_clone(),
            server.try_clone(),
        ) {
            streams.extend([client, server]);
            let (a, b) = (shared.clone(), shared.clone());
            std::thread::spawn(move || pump(c1, s1, &a));
            std::thread::spawn(move || pump(s2, c2, &b));
        }
    }
}

/// Copies `from` to `to` until either ends or the link closes; while the
/// link is cut, holds what it read.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if shared.closing.load(Ordering::SeqCst) {
            break;
        }
        if shared.cut.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                while shared.cut.load(Ordering::SeqCst) && !shared.closing.load(Ordering::SeqCst) {
                    std::thread::sleep(POLL);
                }
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
