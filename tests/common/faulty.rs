//! Upstreams (and identity providers) that misbehave: raw TCP servers that read a request
//! head, then break off, reset, stall or answer garbage.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a faulty upstream does once it has read a request head.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// A `200` head declaring `declared` bytes (chunked when `None`), `sent` bytes of body, then
    /// `end`.
    Partial {
        declared: Option<usize>,
        sent: usize,
        end: End,
    },
    /// No answer at all, then `end`.
    Silent(End),
    /// Bytes that are not an HTTP response, then a close.
    Garbage(&'static [u8]),
    /// An answer written out byte for byte (one that a well-behaved server would not send),
    /// then a close.
    Answer(&'static [u8]),
}

#[derive(Debug, Clone, Copy)]
pub enum End {
    /// A clean close (FIN).
    Close,
    /// A reset (RST: zero linger).
    Reset,
    /// Nothing: the connection stays open until ucgate gives up on it.
    Stall,
}

/// A raw TCP upstream that misbehaves the same way on every connection. Counts the connections
/// it got and the ones still open, so that a stalled one can be seen released.
pub struct FaultyUpstream {
    pub addr: std::net::SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Connections still open.
    pub open: Arc<AtomicUsize>,
}

impl FaultyUpstream {
    pub async fn start(fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (counter, total) = (open.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                total.fetch_add(1, Ordering::SeqCst);
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    misbehave(stream, fault).await;
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            accepted,
            open,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn misbehave(mut stream: TcpStream, fault: Fault) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let end = match fault {
        Fault::Garbage(bytes) | Fault::Answer(bytes) => {
            let _ = stream.write_all(bytes).await;
            End::Close
        }
        Fault::Silent(end) => end,
        Fault::Partial {
            declared,
            sent,
            end,
        } => {
            let framing = match declared {
                Some(n) => format!("content-length: {n}"),
                None => "transfer-encoding: chunked".into(),
            };
            let mut answer = format!("HTTP/1.1 200 OK\r\n{framing}\r\n\r\n").into_bytes();
            match declared {
                Some(_) => answer.extend(std::iter::repeat_n(b'x', sent)),
                None => {
                    answer.extend(format!("{sent:x}\r\n").bytes());
                    answer.extend(std::iter::repeat_n(b'x', sent));
                    answer.extend(b"\r\n");
                }
            }
            let _ = stream.write_all(&answer).await;
            end
        }
    };
    match end {
        End::Close => {}
        End::Reset => {
            let _ = stream.set_zero_linger();
        }
        // Held until ucgate closes its side.
        End::Stall => while let Ok(1..) = stream.read(&mut chunk).await {},
    }
}
