//! The system's resolver configuration: a resolv.conf and a hosts file of the test's own
//! (never the machine's), the search list and `ndots` applied to `lookup` and `lookup_ip`
//! as glibc applies them, against the testkit upstream on loopback.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use dnscore::proto::rr::RecordType;
use dnscore::proto::rr::rdata::{A, AAAA};
use dnscore::{Error, Resolver, ResolverBuilder};
use dnscore_testkit::hickory_proto::rr::RData;
use dnscore_testkit::{Behavior, Proto, TestUpstream};

/// A resolv.conf as the kubelet writes it for a pod in namespace `shop`.
const POD_RESOLV_CONF: &str = "search shop.svc.cluster.local svc.cluster.local cluster.local\n\
                               nameserver 10.100.0.10\n\
                               options ndots:5\n";

/// A directory of the test's own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dnscore-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The testkit upstream as a small cluster DNS: `cluster.local` and `example.com` zones,
/// and NXDOMAIN for the rest (as CoreDNS forwarding to a recursive resolver gives).
async fn cluster_dns() -> TestUpstream {
    let up = TestUpstream::start().await.unwrap();
    up.add_zone(".");
    up.add_zone("cluster.local.");
    up.add_zone("example.com.");
    up.add_record(
        "redis.shop.svc.cluster.local.",
        RData::A(A::new(10, 0, 0, 7)),
        30,
    );
    up.add_record(
        "payments.billing.svc.cluster.local.",
        RData::A(A::new(10, 0, 0, 8)),
        30,
    );
    up.add_record("example.com.", RData::A(A::new(192, 0, 2, 10)), 300);
    up.add_record("api.example.com.", RData::A(A::new(192, 0, 2, 11)), 300);
    up
}

/// A resolver built from `resolv_conf` (and `hosts`), asking `up` instead of the file's
/// nameserver (10.100.0.10 is not on this machine: the file's nameservers are checked,
/// then replaced).
fn resolver(resolv_conf: &Path, hosts: Option<&Path>, up: &TestUpstream) -> Resolver {
    let mut builder = ResolverBuilder::from_resolv_conf(resolv_conf).unwrap();
    if let Some(hosts) = hosts {
        builder = builder.hosts_file(hosts);
    }
    let r = builder.build().unwrap();
    assert_eq!(
        r.upstream_addrs(),
        vec!["10.100.0.10:53".parse().unwrap()],
        "the file's nameserver"
    );
    r.set_upstreams(&[up.addr()]).unwrap();
    r
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn short_names_go_through_the_search_list_and_repeat_from_the_cache() {
    let dir = Dir::new("search");
    let up = cluster_dns().await;
    let r = resolver(&dir.file("resolv.conf", POD_RESOLV_CONF), None, &up);

    // The first candidate answers: A and AAAA (NODATA) for it, nothing else.
    assert_eq!(r.lookup_ip("redis").await.unwrap(), vec![ip("10.0.0.7")]);
    assert_eq!(up.queries("redis.shop.svc.cluster.local", Proto::Udp), 2);
    assert_eq!(up.total_queries(), 2);

    // A service in another namespace: the second candidate, after an NXDOMAIN.
    assert_eq!(
        r.lookup_ip("payments.billing").await.unwrap(),
        vec![ip("10.0.0.8")]
    );
    assert_eq!(
        up.queries("payments.billing.shop.svc.cluster.local", Proto::Udp),
        2
    );
    assert_eq!(
        up.queries("payments.billing.svc.cluster.local", Proto::Udp),
        2
    );

    // Again: every candidate's answer, negative ones included, comes from the cache.
    let before = up.total_queries();
    for _ in 0..10 {
        assert_eq!(r.lookup_ip("redis").await.unwrap(), vec![ip("10.0.0.7")]);
        assert_eq!(
            r.lookup_ip("payments.billing").await.unwrap(),
            vec![ip("10.0.0.8")]
        );
    }
    assert_eq!(up.total_queries(), before, "no upstream query on a repeat");

    // `lookup` takes the same path, for one type.
    let l = r.lookup("redis", RecordType::A).await.unwrap();
    assert_eq!(l.rdata_of(RecordType::A).count(), 1);
    assert_eq!(
        l.records()[0].name.to_string(),
        "redis.shop.svc.cluster.local."
    );
    // No AAAA: the later candidates are asked too (once: NXDOMAIN, cached), and the
    // first one's NODATA is the answer, not an error.
    for _ in 0..3 {
        let l = r.lookup("redis", RecordType::AAAA).await.unwrap();
        assert!(l.records().is_empty());
    }
    assert_eq!(
        up.total_queries(),
        before + 3,
        "redis.svc..., redis.cluster.local, redis."
    );

    // A name no candidate has: NXDOMAIN, after all four candidates.
    assert!(matches!(r.lookup_ip("nope").await, Err(Error::NxDomain)));
    for candidate in [
        "nope.shop.svc.cluster.local",
        "nope.svc.cluster.local",
        "nope.cluster.local",
    ] {
        assert_eq!(up.queries(candidate, Proto::Udp), 2, "{candidate}");
    }
    assert_eq!(up.queries("nope", Proto::Udp), 2, "as it is, last");
}

#[tokio::test]
async fn names_with_enough_dots_or_a_trailing_dot_are_asked_as_they_are_first() {
    let dir = Dir::new("ndots");
    let up = cluster_dns().await;
    let r = resolver(&dir.file("resolv.conf", POD_RESOLV_CONF), None, &up);

    // A trailing dot: only as it is.
    assert_eq!(
        r.lookup_ip("example.com.").await.unwrap(),
        vec![ip("192.0.2.10")]
    );
    assert_eq!(up.total_queries(), 2, "A and AAAA of example.com. only");
    assert_eq!(up.queries("example.com", Proto::Udp), 2);

    // Two dots under ndots:5: the search list first (the ndots:5 tax), then as it is.
    assert_eq!(
        r.lookup_ip("api.example.com").await.unwrap(),
        vec![ip("192.0.2.11")]
    );
    assert_eq!(
        up.queries("api.example.com.shop.svc.cluster.local", Proto::Udp),
        2
    );
    assert_eq!(up.queries("api.example.com.cluster.local", Proto::Udp), 2);
    assert_eq!(up.queries("api.example.com", Proto::Udp), 2);

    // With ndots:2 the same name is asked as it is first, and nothing else.
    let dir2 = Dir::new("ndots2");
    let conf = POD_RESOLV_CONF.replace("ndots:5", "ndots:2");
    let up2 = cluster_dns().await;
    let r2 = resolver(&dir2.file("resolv.conf", &conf), None, &up2);
    assert_eq!(
        r2.lookup_ip("api.example.com").await.unwrap(),
        vec![ip("192.0.2.11")]
    );
    assert_eq!(up2.total_queries(), 2);
}

#[tokio::test]
async fn the_hosts_file_comes_first_and_is_followed_when_it_changes() {
    let dir = Dir::new("hosts");
    let up = cluster_dns().await;
    let hosts = dir.file(
        "hosts",
        "127.0.0.1 localhost\n10.9.9.9 db.internal db\nfd00::9 db.internal\n\
         10.0.0.99 redis.shop.svc.cluster.local\n",
    );
    let r = resolver(&dir.file("resolv.conf", POD_RESOLV_CONF), Some(&hosts), &up);

    assert_eq!(
        r.lookup_ip("db.internal").await.unwrap(),
        vec![ip("10.9.9.9"), ip("fd00::9")]
    );
    assert_eq!(r.lookup_ip("DB").await.unwrap(), vec![ip("10.9.9.9")]);
    let v6 = r.lookup("db.internal.", RecordType::AAAA).await.unwrap();
    assert_eq!(
        v6.rdata_of(RecordType::AAAA).collect::<Vec<_>>(),
        vec![&RData::AAAA(AAAA("fd00::9".parse().unwrap()))]
    );
    assert_eq!(up.total_queries(), 0, "the hosts file answered");

    // The hosts file is asked for the name as given, not for search-list candidates.
    assert_eq!(r.lookup_ip("redis").await.unwrap(), vec![ip("10.0.0.7")]);

    // Rewritten (by rename, as the kubelet does): seen within the check interval (1 s).
    let tmp = dir.file("hosts.new", "10.9.9.10 db.internal\n");
    std::fs::rename(&tmp, &hosts).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let ips = r.lookup_ip("db.internal").await.unwrap();
        if ips == vec![ip("10.9.9.10")] {
            break;
        }
        assert_eq!(
            ips,
            vec![ip("10.9.9.9"), ip("fd00::9")],
            "old or new, nothing else"
        );
        assert!(std::time::Instant::now() < deadline, "change not seen");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Gone from the file: asked in DNS (NXDOMAIN there).
    assert!(matches!(r.lookup_ip("db").await, Err(Error::NxDomain)));
}

#[tokio::test]
async fn a_failing_candidate_ends_the_search_instead_of_trying_the_next() {
    let dir = Dir::new("servfail");
    let up = cluster_dns().await;
    let r = ResolverBuilder::from_resolv_conf(dir.file("resolv.conf", POD_RESOLV_CONF))
        .unwrap()
        .failure_ttl(std::time::Duration::ZERO)
        .build()
        .unwrap();
    r.set_upstreams(&[up.addr()]).unwrap();
    // The right answer is the first candidate, which fails; a later candidate exists.
    up.add_record(
        "redis.svc.cluster.local.",
        RData::A(A::new(10, 6, 6, 6)),
        30,
    );
    up.set_behavior("redis.shop.svc.cluster.local.", Behavior::ServFail);
    let err = r.lookup_ip("redis").await.unwrap_err();
    assert!(matches!(err, Error::NoAnswer(_)), "{err}");
    assert_eq!(
        up.queries("redis.svc.cluster.local", Proto::Udp),
        0,
        "not the next candidate's address"
    );
    up.clear_behaviors();
    assert_eq!(r.lookup_ip("redis").await.unwrap(), vec![ip("10.0.0.7")]);
}

#[test]
fn the_files_options_become_dnscore_settings() {
    let dir = Dir::new("options");
    let path = dir.file(
        "resolv.conf",
        "nameserver 10.100.0.10\nnameserver 10.100.0.11\noptions timeout:1 attempts:3 rotate\n",
    );
    let b = ResolverBuilder::from_resolv_conf(&path).unwrap();
    assert_eq!(b.get("attempt-timeout").as_deref(), Some("1s"));
    assert_eq!(b.get("timeout").as_deref(), Some("3s"));
    assert_eq!(b.get("max-attempts").as_deref(), Some("6"));
    assert_eq!(b.get("selection").as_deref(), Some("round-robin"));

    // Without options: dnscore's own timeouts stay (not glibc's 5 s a try).
    let plain = ResolverBuilder::from_resolv_conf(dir.file("plain", POD_RESOLV_CONF)).unwrap();
    let defaults = Resolver::builder();
    for setting in ["attempt-timeout", "timeout", "max-attempts", "selection"] {
        assert_eq!(plain.get(setting), defaults.get(setting), "{setting}");
    }

    // Empty: the local server, as glibc; it builds.
    let empty = ResolverBuilder::from_resolv_conf(dir.file("empty", ""))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        empty.upstream_addrs(),
        vec!["127.0.0.1:53".parse().unwrap()]
    );

    // Unreadable files: clear errors naming them.
    let err = ResolverBuilder::from_resolv_conf(dir.0.join("absent")).unwrap_err();
    assert!(matches!(err, Error::ReadFile { .. }));
    assert!(err.to_string().contains("absent"), "{err}");
    let err = ResolverBuilder::from_resolv_conf(&path)
        .unwrap()
        .hosts_file(dir.0.join("no-hosts"))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("no-hosts"), "{err}");

    // A search domain that is not a name, and ndots past glibc's ceiling, are refused.
    let err = Resolver::builder()
        .upstream("10.0.0.1:53".parse().unwrap())
        .search(["bad..domain"])
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidName(_)), "{err}");
    assert!(Resolver::builder().ndots(16).check().is_err());
}
