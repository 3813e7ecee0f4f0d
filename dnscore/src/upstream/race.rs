//! The race of one query's attempts, as a state machine: it is told what happened (an
//! attempt's outcome, the time) and says what to do next (launch an attempt, wait until an
//! instant, or finish). The sockets and tasks stay outside, in the pool, so that the race is
//! tested on paused time without any (as `domain`'s `dgram_stream` and hickory's
//! `name_server_pool` keep theirs apart).
//!
//! The rules:
//! - The **primary** attempt is the latest one that is not a hedge; its timers drive the
//!   race: a hedge after about the upstream's p95 RTT, a timeout after its adaptive
//!   timeout (doubled after each timeout of this query on an upstream that has answered
//!   nothing since, as a stub backs off: while it answers other queries, a lost attempt is
//!   a lost packet, such as a Service IP's DNAT to a dead endpoint).
//! - Every outcome is classified once, in [`Race::on_event`]: a good answer wins; a failure
//!   of the primary (port refused, reset, SERVFAIL, REFUSED, its socket closed under it,
//!   re-driven because its upstream was found dead or removed) launches a replacement at
//!   once, free of budget: it is not speculative. So does word that the primary's socket
//!   went silent and was retired (*stranded*: another query timed out on it with nothing
//!   answered since, the mark of a conntrack entry leading to a dead endpoint), while the
//!   primary keeps listening. The failure of an earlier attempt or a hedge launches nothing.
//! - A timeout of the primary launches a retry if the pool-wide [`RetryBudget`] allows; a
//!   hedge needs the hedge budget too. Without budget the query keeps waiting on what it
//!   has sent, up to its deadline.
//! - Earlier attempts keep listening: whichever valid answer comes first wins.
//! - At most [`MAX_SENDS_PER_UPSTREAM`] sends to one upstream per query, each upstream that
//!   answered with a failure code is not asked again, and at most `max_attempts` in all.
//! - At the deadline the query ends with a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use smallvec::SmallVec;
use tokio::time::Instant;

use super::budget::{HedgeBudget, RetryBudget};
use crate::answer::Answer;
use crate::error::UpstreamError;

/// One value per upstream of a query, inline up to 8 upstreams: a race allocates nothing
/// of its own on a miss.
type PerUpstream<T> = SmallVec<[T; 8]>;

/// Sends of one query to one upstream at most: the first, and one retry.
pub(crate) const MAX_SENDS_PER_UPSTREAM: u8 = 2;

/// What the race needs to know of the upstreams, in the query's order (index `0..count`).
pub(crate) trait Upstreams {
    /// Its address, for errors.
    fn addr(&self, i: usize) -> SocketAddr;
    /// Whether it is marked down.
    fn is_down(&self, i: usize) -> bool;
    /// Its adaptive attempt timeout, clamped to the configured bounds.
    fn attempt_timeout(&self, i: usize) -> Duration;
    /// When a hedge may follow an attempt to it, once it has an RTT estimate.
    fn hedge_delay(&self, i: usize) -> Option<Duration>;
    /// Whether it answered anything after `at`.
    fn answered_since(&self, i: usize, at: Instant) -> bool;
    /// The selection policy: one of `candidates` (never empty).
    fn select(&self, candidates: &[usize]) -> usize;
}

/// The budgets a race draws on (shared by the pool's queries).
pub(crate) struct Budgets<'a> {
    pub(crate) retry: &'a RetryBudget,
    pub(crate) hedge: &'a HedgeBudget,
}

/// What happened to an attempt, reported by its task.
#[derive(Debug)]
pub(crate) enum Event {
    /// Its socket was retired by another query's timeout; it still listens.
    Stranded,
    /// It ended: a (possibly failure-coded) answer, or why none came.
    Done(Result<Answer, UpstreamError>),
}

/// Why an attempt is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The query's first attempt.
    First,
    /// It replaces a primary that failed: not speculative.
    Replacement,
    /// The primary timed out: speculative, paid from the retry budget.
    Retry,
    /// A second copy elsewhere while the primary still waits: speculative.
    Hedge,
}

/// An attempt to launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Launch {
    /// Which of the query's attempts it is (0 for the first); its events carry it back.
    pub(crate) seq: usize,
    /// The upstream, by index.
    pub(crate) upstream: usize,
    /// Whether this query has sent to that upstream before.
    pub(crate) retry: bool,
    pub(crate) kind: Kind,
    /// The attempt's timeout, after which it counts as slow (it keeps listening).
    pub(crate) timeout: Duration,
    /// When that timeout passes: the instant the race itself acts on.
    pub(crate) timeout_at: Instant,
}

/// What to do next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Start this attempt, then ask again.
    Launch(Launch),
    /// Wait for an event, or until this instant, then ask again.
    Wait(Instant),
    /// The query is over.
    /// The answer comes with the upstream that gave it.
    Done(Result<(Answer, SocketAddr), UpstreamError>),
}

/// An attempt that has not reported its end.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    seq: usize,
    upstream: usize,
}

/// The primary attempt's timers.
#[derive(Clone, Copy, Debug)]
struct Primary {
    seq: usize,
    upstream: usize,
    sent: Instant,
    timeout_at: Instant,
    /// `None` once the hedge went (or was refused), or without an RTT estimate.
    hedge_at: Option<Instant>,
    timed_out: bool,
}

/// One query's race (see the module documentation).
#[derive(Debug)]
pub(crate) struct Race {
    deadline: Instant,
    max_attempts: usize,
    /// Ceiling on an attempt's timeout after backoff.
    max_timeout: Duration,
    sends: PerUpstream<u8>,
    /// Upstreams that answered with a failure code (or a truncated TCP answer).
    gave_up: PerUpstream<bool>,
    outstanding: SmallVec<[Outstanding; 4]>,
    launched: usize,
    primary: Option<Primary>,
    /// A launch that is due, and why.
    due: Option<Kind>,
    backoff: u32,
    last_error: Option<UpstreamError>,
    answer: Option<(Answer, SocketAddr)>,
    /// The upstream of the latest launch, hedges included (named at the deadline).
    last_launched: Option<usize>,
}

impl Race {
    /// A race over `upstreams` upstreams, ending at `deadline`.
    pub(crate) fn new(
        upstreams: usize,
        max_attempts: usize,
        deadline: Instant,
        max_timeout: Duration,
    ) -> Self {
        Self {
            deadline,
            max_attempts,
            max_timeout,
            sends: smallvec::smallvec![0; upstreams],
            gave_up: smallvec::smallvec![false; upstreams],
            outstanding: SmallVec::new(),
            launched: 0,
            primary: None,
            due: Some(Kind::First),
            backoff: 0,
            last_error: None,
            answer: None,
            last_launched: None,
        }
    }

    /// What to do at `now`.
    pub(crate) fn step(
        &mut self,
        now: Instant,
        ups: &impl Upstreams,
        budgets: &Budgets<'_>,
    ) -> Step {
        if let Some(answer) = self.answer.take() {
            return Step::Done(Ok(answer));
        }
        if now >= self.deadline {
            return Step::Done(Err(self.timed_out(ups)));
        }
        self.fire_timers(now, ups);
        if let Some(kind) = self.due.take()
            && self.launched < self.max_attempts
            && let Some(i) = self.pick(ups, kind == Kind::Hedge)
            && self.afford(kind, now, budgets)
        {
            return Step::Launch(self.launch(i, kind, now, ups, budgets));
        }
        if self.outstanding.is_empty() {
            return Step::Done(Err(self
                .last_error
                .take()
                .unwrap_or(UpstreamError::AllDown)));
        }
        let mut wake = self.deadline;
        if let Some(p) = &self.primary {
            if !p.timed_out {
                wake = wake.min(p.timeout_at);
            }
            if let Some(h) = p.hedge_at {
                wake = wake.min(h);
            }
        }
        Step::Wait(wake)
    }

    /// The primary's timeout or hedge time has come: a launch is due.
    fn fire_timers(&mut self, now: Instant, ups: &impl Upstreams) {
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        if !p.timed_out && now >= p.timeout_at {
            p.timed_out = true;
            p.hedge_at = None;
            if !ups.answered_since(p.upstream, p.sent) {
                self.backoff += 1;
            }
            self.due = Some(self.due.map_or(Kind::Retry, |d| d.min_cost(Kind::Retry)));
        } else if p.hedge_at.is_some_and(|h| now >= h) {
            p.hedge_at = None;
            self.due = Some(self.due.map_or(Kind::Hedge, |d| d.min_cost(Kind::Hedge)));
        }
    }

    /// Whether the budgets allow a launch of this kind (taking what it costs).
    fn afford(&self, kind: Kind, now: Instant, budgets: &Budgets<'_>) -> bool {
        match kind {
            Kind::First | Kind::Replacement => true,
            Kind::Retry => budgets.retry.try_take(now),
            Kind::Hedge => {
                if !budgets.hedge.try_take() {
                    return false;
                }
                if budgets.retry.try_take(now) {
                    true
                } else {
                    budgets.hedge.refund();
                    false
                }
            }
        }
    }

    fn launch(
        &mut self,
        i: usize,
        kind: Kind,
        now: Instant,
        ups: &impl Upstreams,
        budgets: &Budgets<'_>,
    ) -> Launch {
        let seq = self.launched;
        self.launched += 1;
        self.last_launched = Some(i);
        let retry = self.sends[i] > 0;
        self.sends[i] += 1;
        self.outstanding.push(Outstanding { seq, upstream: i });
        let timeout = ups
            .attempt_timeout(i)
            .saturating_mul(1 << self.backoff.min(4))
            .min(self.max_timeout);
        if kind != Kind::Hedge {
            let hedge_at = ups
                .hedge_delay(i)
                .filter(|_| budgets.hedge.enabled())
                .map(|h| now + h.min(timeout));
            self.primary = Some(Primary {
                seq,
                upstream: i,
                sent: now,
                timeout_at: now + timeout,
                hedge_at,
                timed_out: false,
            });
        }
        Launch {
            seq,
            upstream: i,
            retry,
            kind,
            timeout,
            timeout_at: now + timeout,
        }
    }

    /// What happened to attempt `seq`.
    pub(crate) fn on_event(&mut self, seq: usize, event: Event, ups: &impl Upstreams) {
        let is_primary = self.primary.is_some_and(|p| p.seq == seq);
        let result = match event {
            Event::Stranded => {
                // Its socket went silent: sending again elsewhere is a re-drive, not a
                // speculation. It keeps listening, so it is not replaced twice.
                if let Some(p) = self.primary.as_mut().filter(|_| is_primary)
                    && !p.timed_out
                {
                    p.timed_out = true;
                    p.hedge_at = None;
                    self.due = Some(Kind::Replacement);
                }
                return;
            }
            Event::Done(result) => result,
        };
        let Some(pos) = self.outstanding.iter().position(|o| o.seq == seq) else {
            return;
        };
        let upstream = self.outstanding.swap_remove(pos).upstream;
        match result {
            Ok(answer) if answer.is_answer() => {
                self.answer = Some((answer, ups.addr(upstream)));
                return;
            }
            Ok(answer) => {
                self.gave_up[upstream] = true;
                self.last_error = Some(UpstreamError::Rcode {
                    addr: ups.addr(upstream),
                    rcode: answer.rcode,
                });
            }
            Err(err) => {
                if matches!(err, UpstreamError::TruncatedOverTcp(_)) {
                    self.gave_up[upstream] = true;
                }
                tracing::debug!(%err, "upstream attempt failed");
                self.last_error = Some(err);
            }
        }
        if is_primary {
            // Replaced at once, unbudgeted: the failure was no speculation's doing. The
            // replacement gets timers of its own.
            self.primary = None;
            self.due = Some(Kind::Replacement);
        }
    }

    /// The upstream for a launch: healthy and not given up, below its send limit,
    /// preferring ones this query has not asked; a hedge goes only to one not yet asked.
    /// With every upstream down they are asked anyway (as CoreDNS's forward does: an
    /// upstream is often a Service IP whose DNAT picks another endpoint for another socket;
    /// a dead one refuses at once, so this still fails fast).
    fn pick(&self, ups: &impl Upstreams, hedge: bool) -> Option<usize> {
        let n = self.sends.len();
        let usable = |i: usize| !self.gave_up[i] && self.sends[i] < MAX_SENDS_PER_UPSTREAM;
        let fresh = |i: usize| self.sends[i] == 0;
        let all_down = (0..n).all(|i| ups.is_down(i));
        let tiers: [&dyn Fn(usize) -> bool; 4] = [
            &|i| usable(i) && fresh(i) && !ups.is_down(i),
            &|i| !hedge && usable(i) && !ups.is_down(i),
            &|i| !hedge && all_down && usable(i) && fresh(i),
            &|i| !hedge && all_down && usable(i),
        ];
        tiers.iter().find_map(|tier| {
            let candidates: PerUpstream<usize> = (0..n).filter(|&i| tier(i)).collect();
            (!candidates.is_empty()).then(|| ups.select(&candidates))
        })
    }

    /// The error at the deadline: a timeout, named after the last upstream launched.
    fn timed_out(&self, ups: &impl Upstreams) -> UpstreamError {
        UpstreamError::Timeout(ups.addr(self.last_launched.unwrap_or(0)))
    }
}

impl Kind {
    /// Of two launches due at once, the one that costs less.
    fn min_cost(self, other: Self) -> Self {
        let cost = |k: Self| match k {
            Self::First | Self::Replacement => 0,
            Self::Retry => 1,
            Self::Hedge => 2,
        };
        if cost(other) < cost(self) {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashSet;

    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;

    use super::*;
    use crate::fixtures::{a, client_query, exchange};

    const MS: Duration = Duration::from_millis(1);

    /// Upstreams with fixed timeouts and hedge delays, selecting the first candidate.
    struct Fake {
        timeout: Duration,
        hedge: Option<Duration>,
        down: RefCell<HashSet<usize>>,
    }

    impl Fake {
        fn new() -> Self {
            Self {
                timeout: 100 * MS,
                hedge: None,
                down: RefCell::default(),
            }
        }
    }

    impl Upstreams for Fake {
        fn addr(&self, i: usize) -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 1], 5300 + i as u16))
        }
        fn is_down(&self, i: usize) -> bool {
            self.down.borrow().contains(&i)
        }
        fn attempt_timeout(&self, _: usize) -> Duration {
            self.timeout
        }
        fn hedge_delay(&self, _: usize) -> Option<Duration> {
            self.hedge
        }
        fn answered_since(&self, _: usize, _: Instant) -> bool {
            false
        }
        fn select(&self, candidates: &[usize]) -> usize {
            candidates[0]
        }
    }

    fn good() -> Answer {
        let client = client_query("a.test.", RecordType::A, None);
        exchange(
            &client,
            vec![a("a.test.", 60, [192, 0, 2, 1])],
            ResponseCode::NoError,
        )
        .1
    }

    fn servfail() -> Answer {
        let client = client_query("a.test.", RecordType::A, None);
        exchange(&client, vec![], ResponseCode::ServFail).1
    }

    struct Setup {
        retry: RetryBudget,
        hedge: HedgeBudget,
    }

    impl Setup {
        fn new(retry_ratio: f64, hedge_share: f64, now: Instant) -> Self {
            Self {
                retry: RetryBudget::new(retry_ratio, now),
                hedge: HedgeBudget::new(hedge_share),
            }
        }
        fn budgets(&self) -> Budgets<'_> {
            Budgets {
                retry: &self.retry,
                hedge: &self.hedge,
            }
        }
        /// Spends the retry budget (which counts one refusal).
        fn drain(&self, now: Instant) {
            while self.retry.try_take(now) {}
        }
    }

    /// A race over `upstreams` fake upstreams ending `deadline` after now, with a 10%
    /// retry budget and no hedging.
    fn start(
        upstreams: usize,
        max_attempts: usize,
        deadline: Duration,
    ) -> (Fake, Instant, Setup, Race) {
        let t0 = Instant::now();
        let race = Race::new(upstreams, max_attempts, t0 + deadline, 800 * MS);
        (Fake::new(), t0, Setup::new(0.1, 0.0, t0), race)
    }

    fn launched(step: Step) -> Launch {
        match step {
            Step::Launch(l) => l,
            other => panic!("expected a launch, got {other:?}"),
        }
    }

    fn waits(step: Step) -> Instant {
        match step {
            Step::Wait(at) => at,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_answer_wins_and_ends_the_race() {
        let (ups, t0, s, mut race) = start(3, 6, 2000 * MS);
        let first = launched(race.step(t0, &ups, &s.budgets()));
        assert_eq!((first.seq, first.upstream, first.kind), (0, 0, Kind::First));
        assert_eq!(first.timeout, 100 * MS);
        assert_eq!(waits(race.step(t0, &ups, &s.budgets())), t0 + 100 * MS);
        tokio::time::advance(100 * MS).await;
        let retry = launched(race.step(Instant::now(), &ups, &s.budgets()));
        assert_eq!((retry.upstream, retry.kind), (1, Kind::Retry));
        assert_eq!(
            retry.timeout,
            200 * MS,
            "backed off: the upstream answered nothing"
        );
        // The first attempt, still listening, answers first.
        race.on_event(0, Event::Done(Ok(good())), &ups);
        assert!(matches!(
            race.step(Instant::now(), &ups, &s.budgets()),
            Step::Done(Ok(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_is_re_driven_at_once_without_budget() {
        let (ups, t0, s, mut race) = start(2, 4, 2000 * MS);
        s.drain(t0);
        let refused = s.retry.refused();
        launched(race.step(t0, &ups, &s.budgets()));
        race.on_event(
            0,
            Event::Done(Err(UpstreamError::Refused(ups.addr(0)))),
            &ups,
        );
        let next = launched(race.step(t0, &ups, &s.budgets()));
        assert_eq!((next.upstream, next.kind), (1, Kind::Replacement));
        assert_eq!(s.retry.refused(), refused, "a re-drive is not speculative");
        // So is a re-drive of an upstream found dead while the attempt waited.
        race.on_event(
            1,
            Event::Done(Err(UpstreamError::Redriven(ups.addr(1)))),
            &ups,
        );
        let third = launched(race.step(t0, &ups, &s.budgets()));
        assert_eq!(
            (third.upstream, third.retry),
            (0, true),
            "the second send to 0"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_retries_within_budget_and_a_stranded_attempt_is_re_driven() {
        let (ups, t0, s, mut race) = start(3, 6, 2000 * MS);
        launched(race.step(t0, &ups, &s.budgets()));
        tokio::time::advance(100 * MS).await;
        let t1 = Instant::now();
        let retry = launched(race.step(t1, &ups, &s.budgets()));
        assert_eq!((retry.upstream, retry.kind), (1, Kind::Retry));
        assert_eq!(retry.timeout_at, t1 + retry.timeout);
        // Word that the retry's socket went silent and was retired: sent again at once,
        // before its own timeout, even with the budget spent.
        s.drain(t1);
        let refused = s.retry.refused();
        race.on_event(1, Event::Stranded, &ups);
        let redrive = launched(race.step(t1 + 10 * MS, &ups, &s.budgets()));
        assert_eq!((redrive.upstream, redrive.kind), (2, Kind::Replacement));
        assert_eq!(s.retry.refused(), refused, "a re-drive is not speculative");
        // The stranded attempt's own timeout passing later launches nothing more.
        let wake = waits(race.step(t1 + 100 * MS, &ups, &s.budgets()));
        assert_eq!(wake, redrive.timeout_at, "the re-drive's own timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_budget_spent_a_timed_out_query_keeps_waiting() {
        let (ups, t0, s, mut race) = start(2, 4, 2000 * MS);
        s.drain(t0);
        let refused = s.retry.refused();
        launched(race.step(t0, &ups, &s.budgets()));
        tokio::time::advance(100 * MS).await;
        let now = Instant::now();
        assert_eq!(
            waits(race.step(now, &ups, &s.budgets())),
            t0 + 2000 * MS,
            "no retry: wait for the first attempt until the deadline"
        );
        assert_eq!(s.retry.refused(), refused + 1, "the refusal is counted");
        // Its late answer is still taken.
        race.on_event(0, Event::Done(Ok(good())), &ups);
        assert!(matches!(
            race.step(now, &ups, &s.budgets()),
            Step::Done(Ok(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_the_race_with_a_timeout() {
        let (ups, t0, s, mut race) = start(1, 6, 300 * MS);
        launched(race.step(t0, &ups, &s.budgets()));
        tokio::time::advance(100 * MS).await;
        let retry = launched(race.step(Instant::now(), &ups, &s.budgets()));
        assert_eq!((retry.upstream, retry.retry), (0, true));
        tokio::time::advance(100 * MS).await;
        // Two sends to the one upstream: no third, whatever the budget.
        assert_eq!(
            waits(race.step(Instant::now(), &ups, &s.budgets())),
            t0 + 300 * MS
        );
        tokio::time::advance(100 * MS).await;
        match race.step(Instant::now(), &ups, &s.budgets()) {
            Step::Done(Err(UpstreamError::Timeout(addr))) => assert_eq!(addr, ups.addr(0)),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failure_codes_move_on_and_the_last_error_is_kept() {
        let (ups, t0, s, mut race) = start(2, 6, 2000 * MS);
        launched(race.step(t0, &ups, &s.budgets()));
        race.on_event(0, Event::Done(Ok(servfail())), &ups);
        assert_eq!(launched(race.step(t0, &ups, &s.budgets())).upstream, 1);
        race.on_event(1, Event::Done(Ok(servfail())), &ups);
        // Both gave SERVFAIL: asking them again gives the same.
        match race.step(t0, &ups, &s.budgets()) {
            Step::Done(Err(UpstreamError::Rcode { addr, rcode: 2 })) => {
                assert_eq!(addr, ups.addr(1));
            }
            other => panic!("expected the SERVFAIL, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedge_needs_both_budgets_and_its_failure_launches_nothing() {
        let mut ups = Fake::new();
        ups.hedge = Some(20 * MS);
        let t0 = Instant::now();
        let s = Setup::new(0.1, 1.0, t0);
        s.hedge.deposit();
        let mut race = Race::new(3, 6, t0 + 2000 * MS, 800 * MS);
        launched(race.step(t0, &ups, &s.budgets()));
        assert_eq!(waits(race.step(t0, &ups, &s.budgets())), t0 + 20 * MS);
        let hedge = launched(race.step(t0 + 20 * MS, &ups, &s.budgets()));
        assert_eq!((hedge.upstream, hedge.kind), (1, Kind::Hedge));
        race.on_event(1, Event::Done(Ok(servfail())), &ups);
        assert_eq!(
            waits(race.step(t0 + 30 * MS, &ups, &s.budgets())),
            t0 + 100 * MS,
            "the primary's timeout, nothing sooner"
        );
        // No hedge budget: no hedge, and the retry budget is left alone.
        let mut race = Race::new(3, 6, t0 + 2000 * MS, 800 * MS);
        launched(race.step(t0, &ups, &s.budgets()));
        let before = s.retry.refused();
        assert_eq!(
            waits(race.step(t0 + 20 * MS, &ups, &s.budgets())),
            t0 + 100 * MS
        );
        assert_eq!(s.retry.refused(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn every_upstream_down_is_asked_anyway() {
        let ups = Fake::new();
        ups.down.borrow_mut().extend([0, 1]);
        let t0 = Instant::now();
        let s = Setup::new(0.1, 0.0, t0);
        let mut race = Race::new(2, 6, t0 + 2000 * MS, 800 * MS);
        assert_eq!(launched(race.step(t0, &ups, &s.budgets())).upstream, 0);
        // One up: only it is asked after a failure.
        ups.down.borrow_mut().remove(&1);
        race.on_event(
            0,
            Event::Done(Err(UpstreamError::Refused(ups.addr(0)))),
            &ups,
        );
        assert_eq!(launched(race.step(t0, &ups, &s.budgets())).upstream, 1);
    }
}
