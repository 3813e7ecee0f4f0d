//! Starts a [`TestUpstream`] on `127.0.0.1` for tests written in other languages (the C
//! and Go tests of `dnscore-ffi`): prints its address (`127.0.0.1:PORT`) as the first line
//! of stdout, then serves the default `test.` zone until stdin closes or SIGTERM arrives.

use std::io::{BufRead, Write};

use dnscore_testkit::TestUpstream;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let upstream = TestUpstream::start().await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", upstream.addr())?;
        out.flush()?;
    }
    // Stdin is read on a plain thread: end of file (the parent closed the pipe or exited)
    // means stop.
    let (stdin_closed, stdin_eof) = oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = String::new();
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read_line(&mut sink), Ok(n) if n > 0) {
            sink.clear();
        }
        let _ = stdin_closed.send(());
    });
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = stdin_eof => {}
        _ = term.recv() => {}
    }
    upstream.stop();
    Ok(())
}
