//! Starts a [`TestUpstream`] on `127.0.0.1` for tests written in other languages (the C
//! and Go tests of `dnscore-ffi`): prints its address (`127.0.0.1:PORT`) as the first line
//! of stdout, then serves the default `test.` zone until stdin closes or SIGTERM arrives.
//! Arguments `NAME=IPV4` add A records (TTL 300) to the zone, e.g.
//! `test-upstream web.test.=127.0.0.1` for the HTTP benchmark of `benches/http/`.

use std::io::{BufRead, Write};
use std::net::Ipv4Addr;

use dnscore_testkit::TestUpstream;
use dnscore_testkit::hickory_proto::rr::RData;
use dnscore_testkit::hickory_proto::rr::rdata::A;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut records = Vec::new();
    for arg in std::env::args().skip(1) {
        let record = arg
            .split_once('=')
            .and_then(|(name, ip)| Some((name.to_owned(), ip.parse::<Ipv4Addr>().ok()?)));
        let Some(record) = record else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("usage: test-upstream [NAME=IPV4]...; not {arg:?}"),
            ));
        };
        records.push(record);
    }
    let upstream = TestUpstream::start().await?;
    for (name, ip) in records {
        upstream.add_record(&name, RData::A(A(ip)), 300);
    }
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
