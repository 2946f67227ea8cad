//! The backend every measurement talks to, directly or through a relay: this
//! same program re-executed with `--backend-child`, serving one TCP listener
//! on 127.0.0.1 and one Unix socket. A separate process, so that it can be
//! pinned to a CPU on its own and its memory never mixes with the client's.
//!
//! The first byte a client sends chooses what the backend does:
//!
//! | byte | then | the backend |
//! |---|---|---|
//! | `U` | length (u64 LE), that many bytes | counts them, answers the length (u64 LE), waits for EOF |
//! | `D` | length (u64 LE) | sends that many bytes, waits for EOF |
//! | `E` | anything | echoes every byte (the `E` too) until EOF |
//! | `C` | 31 bytes | answers 32 bytes and closes first |
//!
//! No step relies on half-close, so peers that do not relay it
//! (systemd-socket-proxyd) are measured too. `C` closes from the backend's
//! side so that TIME_WAIT stays on listening ports, not on the client's or
//! the relay's ephemeral ports (a connection-rate run opens tens of
//! thousands of connections).

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_io::Async;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use socket2::{Domain, SockAddr, Socket, Type};

/// Read and write size of the bulk modes (client and backend).
pub const CHUNK: usize = 256 * 1024;
/// Size of the connection-rate exchange, each way.
pub const CONN_MESSAGE: usize = 32;

/// A running backend process.
pub struct Backend {
    child: Child,
    /// Its TCP listener.
    pub tcp: SocketAddr,
    /// Its Unix listener.
    pub unix: PathBuf,
}

impl Backend {
    /// Starts a backend whose Unix socket lives in `dir`, optionally pinned
    /// to `cpu` (every thread it will start inherits the mask).
    pub fn start(dir: &Path, tag: &str, cpu: Option<usize>) -> io::Result<Backend> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("--backend-child")
            .arg(dir)
            .arg(tag)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        crate::peers::prepare(&mut command, cpu, None);
        let mut child = command.spawn()?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        BufReader::new(stdout).read_line(&mut line)?;
        let mut words = line.split_whitespace();
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some("ready"), Some(port), Some(path)) => port.parse::<u16>().ok().map(|port| {
                (
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    PathBuf::from(path),
                )
            }),
            _ => None,
        };
        match parsed {
            Some((tcp, unix)) => Ok(Backend { child, tcp, unix }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::other(format!(
                    "backend did not start (said {line:?})"
                )))
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listener(domain: Domain, address: &SockAddr) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::STREAM, None)?;
    if domain != Domain::UNIX {
        socket.set_reuse_address(true)?;
    }
    socket.bind(address)?;
    // Large enough for the idle-connection run's bursts.
    socket.listen(4096)?;
    Ok(socket)
}

/// The `--backend-child DIR TAG` entry point: serves until its standard
/// input closes (the benchmark exited or dropped it).
pub fn child_main(args: &[String]) -> io::Result<()> {
    let [dir, tag, ..] = args else {
        return Err(io::Error::other("usage: --backend-child DIR TAG"));
    };
    let tcp = listener(Domain::IPV4, &SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let port = tcp.local_addr()?.as_socket().map(|a| a.port()).unwrap_or(0);
    let path = Path::new(dir).join(format!("backend-{tag}.sock"));
    let unix = listener(Domain::UNIX, &SockAddr::unix(&path)?)?;
    println!("ready {port} {}", path.display());
    std::thread::spawn(|| {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        std::process::exit(0);
    });
    let tcp = Async::new(std::net::TcpListener::from(tcp))?;
    let unix = Async::new(std::os::unix::net::UnixListener::from(
        std::os::fd::OwnedFd::from(unix),
    ))?;
    // A multi-threaded executor, one thread per core, as the async-std
    // runtime this backend ran on before.
    let executor: &'static async_executor::Executor<'static> =
        Box::leak(Box::new(async_executor::Executor::new()));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    for _ in 1..threads {
        std::thread::spawn(|| {
            async_io::block_on(executor.run(futures_lite::future::pending::<()>()))
        });
    }
    async_io::block_on(executor.run(futures_lite::future::or(
        async {
            loop {
                match tcp.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.get_ref().set_nodelay(true);
                        executor
                            .spawn(async move {
                                let _ = serve(stream).await;
                            })
                            .detach();
                    }
                    Err(e) => pause_after(e).await,
                }
            }
        },
        async {
            loop {
                match unix.accept().await {
                    Ok((stream, _)) => {
                        executor
                            .spawn(async move {
                                let _ = serve(stream).await;
                            })
                            .detach();
                    }
                    Err(e) => pause_after(e).await,
                }
            }
        },
    )))
}

async fn pause_after(error: io::Error) {
    eprintln!("bench backend: accept failed: {error}");
    async_io::Timer::after(Duration::from_millis(50)).await;
}

async fn read_u64<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    stream.read_exact(&mut bytes).await?;
    Ok(u64::from_le_bytes(bytes))
}

/// Reads until EOF (or an error): the client decides when the connection ends.
async fn wait_eof<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut scrap = [0u8; 64];
    while let Ok(1..) = stream.read(&mut scrap).await {}
}

async fn serve<S>(mut stream: S) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut mode = [0u8; 1];
    stream.read_exact(&mut mode).await?;
    match mode[0] {
        b'U' => {
            let length = read_u64(&mut stream).await?;
            let mut buffer = vec![0u8; CHUNK];
            let mut left = length;
            while left > 0 {
                let want = buffer
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                match stream.read(&mut buffer[..want]).await? {
                    0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                    n => left -= n as u64,
                }
            }
            stream.write_all(&length.to_le_bytes()).await?;
            wait_eof(&mut stream).await;
        }
        b'D' => {
            let length = read_u64(&mut stream).await?;
            let buffer = vec![0x5a_u8; CHUNK];
            let mut left = length;
            while left > 0 {
                let now = buffer
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                stream.write_all(&buffer[..now]).await?;
                left -= now as u64;
            }
            wait_eof(&mut stream).await;
        }
        b'E' => {
            stream.write_all(&mode).await?;
            let mut buffer = vec![0u8; 4096];
            loop {
                match stream.read(&mut buffer).await? {
                    0 => break,
                    n => stream.write_all(&buffer[..n]).await?,
                }
            }
        }
        b'C' => {
            let mut request = [0u8; CONN_MESSAGE - 1];
            stream.read_exact(&mut request).await?;
            stream.write_all(&[b'c'; CONN_MESSAGE]).await?;
            // Dropping the stream closes it: the backend closes first.
        }
        other => {
            return Err(io::Error::other(format!("unknown mode byte {other:#x}")));
        }
    }
    Ok(())
}
