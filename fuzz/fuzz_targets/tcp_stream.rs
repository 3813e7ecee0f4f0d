//! The sidecar's TCP stream reader: arbitrary bytes arrive on a client stream (a
//! `tokio::io::duplex` pipe into `dnscore_sidecar::serve_stream`) and the client then closes
//! its write side. The server must finish (no hang), and write only whole length-prefixed
//! frames, each an answer (QR=1, parsed by hickory) to a query that was sent, at most one per
//! whole query frame.
//!
//! Misses go to the fixture's test upstream on 127.0.0.1; everything else stays in memory.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use dnscore_fuzz::{HEADER_LEN, check_client_answer, fixture, id_of};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longer than anything a finished connection takes; past it the server hangs.
const HANG: Duration = Duration::from_secs(20);

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let out = f.rt.block_on(async {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let server = tokio::spawn(dnscore_sidecar::serve_stream(server, f.resolver.clone()));
        let (mut read, mut write) = tokio::io::split(client);
        let send = async {
            // The server may stop reading early (a packet it drops); then writes fail.
            let _ = write.write_all(data).await;
            let _ = write.shutdown().await;
        };
        let receive = async {
            let mut out = Vec::new();
            read.read_to_end(&mut out)
                .await
                .expect("reading the answers");
            out
        };
        let ((), out) = tokio::time::timeout(HANG, async { tokio::join!(send, receive) })
            .await
            .expect("serve_stream hangs after the client closed");
        tokio::time::timeout(HANG, server)
            .await
            .expect("serve_stream returns")
            .expect("serve_stream does not panic");
        out
    });

    // How many whole query frames were sent, per ID.
    let mut sent: HashMap<u16, usize> = HashMap::new();
    for frame in frames(data).0 {
        if frame.len() >= 2 {
            *sent.entry(id_of(frame)).or_default() += 1;
        }
    }
    let (answers, rest) = frames(&out);
    assert!(
        rest.is_empty(),
        "the server wrote a partial frame: {rest:02x?}"
    );
    for answer in answers {
        assert!(
            answer.len() >= HEADER_LEN,
            "an answer frame shorter than a header"
        );
        let id = id_of(answer);
        let left = sent.get_mut(&id).filter(|n| **n > 0).unwrap_or_else(|| {
            panic!("an answer with ID {id:#06x} that no (remaining) query carried")
        });
        *left -= 1;
        check_client_answer(answer, id);
    }
});

/// Splits a stream into its whole length-prefixed frames and the bytes left over.
fn frames(mut stream: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut frames = Vec::new();
    while stream.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([stream[0], stream[1]]));
        let Some(frame) = stream.get(2..2 + len) else {
            break;
        };
        frames.push(frame);
        stream = &stream[2 + len..];
    }
    (frames, stream)
}
