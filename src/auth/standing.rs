//! What the directory last said about each person whose UC token is in use, so that access
//! follows XiVO: a user disabled (`enableclient = 0`), deleted, or left without a profile loses
//! access within `users.recheck`, and a changed profile is what route policies see, without
//! waiting for the token to expire.
//!
//! The request path never asks the directory. Each login has a [`Cell`] holding the directory's
//! last word; a validated token keeps its login's cell beside it in the token cache, so that a
//! cache hit reads the verdict with one atomic load, no table look-up. A background task looks
//! every login of the table up again every `recheck`, all at once, and writes the cells; a
//! directory that cannot answer leaves them as they are: tokens keep working as they did.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::directory::{Directory, User};

/// The last word of the directory on one login.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    /// Seen in a token; not asked about yet: the token's word stands.
    Pending,
    /// May log in, with this profile.
    Allowed(Arc<str>),
    /// Unknown to the directory, CTI login disabled, or no profile.
    Refused,
}

/// What a token of this login may do now, given the profile it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// As the token says.
    Stands,
    /// With this profile instead of the token's.
    Profile(Arc<str>),
    /// Nothing: the directory refuses the login.
    Refused,
}

/// One login's state, shared by its table entry and every cached token of the login: 48
/// bytes with Arc's counts, and the login's text (the table finds the cell by it).
#[derive(Debug)]
pub struct Cell {
    login: Box<str>,
    known: ArcSwap<Known>,
    /// The refresh round in which a request last read this cell (a login idle for long is
    /// dropped from the table), or [`EVICTED`] once dropped: no longer refreshed, and a token
    /// holding it must fetch a fresh cell.
    seen: AtomicU64,
}

/// What [`Cell::seen`] holds once the cell has left the table: above every round, so that a
/// request reading the cell never brings it back.
const EVICTED: u64 = u64::MAX;

impl Cell {
    /// The verdict for a token carrying `profile`, read in refresh round `round`. Lock-free:
    /// two atomic loads, and a write only at the first read of a round.
    fn verdict(&self, profile: &str, round: u64) -> Verdict {
        let seen = self.seen.load(Ordering::Relaxed);
        if seen < round {
            // Lost to a concurrent read of the same round, or to the eviction: either way,
            // what it would have written is there or must stay.
            let _ = self
                .seen
                .compare_exchange(seen, round, Ordering::Relaxed, Ordering::Relaxed);
        }
        match &**self.known.load() {
            Known::Pending => Verdict::Stands,
            Known::Allowed(now) if **now == *profile => Verdict::Stands,
            Known::Allowed(now) => Verdict::Profile(now.clone()),
            Known::Refused => Verdict::Refused,
        }
    }

    fn is_refused(&self) -> bool {
        **self.known.load() == Known::Refused
    }

    fn is_pending(&self) -> bool {
        **self.known.load() == Known::Pending
    }

    /// No longer refreshed: fetch the login's cell again with [`Standing::cell`].
    pub fn is_evicted(&self) -> bool {
        self.seen.load(Ordering::Relaxed) == EVICTED
    }

    fn evict(&self) {
        self.seen.store(EVICTED, Ordering::Relaxed);
    }
}

/// A cell in the table, found by its login: the login is held once, by the cell (a map from
/// the login to the cell held it twice, and a slot twice the size).
#[derive(Debug)]
struct Entry(Arc<Cell>);

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        &self.0.login
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0.login == other.0.login
    }
}

impl Eq for Entry {}

impl Hash for Entry {
    // As `str` hashes: `Borrow<str>` requires it.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.login.hash(state);
    }
}

/// The cells of the logins seen in UC tokens, refreshed from the directory. Shared by the
/// configurations that follow one another (see [`Standing::inherit`]).
///
/// A plain map under a mutex rather than a moka cache: it is read once per validated token (a
/// cache miss, beside a signature check), never per request, and the background round that
/// sweeps it already knows which logins went idle. A moka entry cost about 250 bytes more per
/// login (its deques, timestamps and key copies): 25 MiB with 100,000 logins.
#[derive(Debug)]
pub struct Standing {
    table: Arc<Table>,
    /// Logins held at most: this configuration's (`tokens.cache_capacity`), also in a table
    /// it inherits.
    capacity: usize,
    /// Refresh rounds without a request after which a login leaves the table.
    idle_rounds: u64,
    recheck: Duration,
    /// Held by this configuration only: its background task ends when the configuration goes.
    alive: Arc<()>,
}

#[derive(Debug)]
struct Table {
    cells: Mutex<Cells>,
    /// The refresh round under way: counted up at each round (see `Cell::seen`).
    round: AtomicU64,
    /// When the logins were last looked up (or the table made): the next round is due
    /// `recheck` after it, whichever configuration runs it. A reload starts a new task, which
    /// must not put the round off again (reloads more often than `recheck` would keep a
    /// deleted user's tokens working).
    last_round: Mutex<tokio::time::Instant>,
}

/// The cells, found by login.
type Cells = HashSet<Entry, foldhash::fast::RandomState>;

/// What a fresh cell knows: shared by every such cell instead of one allocation each.
static PENDING: LazyLock<Arc<Known>> = LazyLock::new(|| Arc::new(Known::Pending));

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, Cells> {
        self.cells.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Standing {
    /// A table for at most `capacity` logins, each dropped after `idle` without a request (a
    /// token lives no longer than that), looked up again every `recheck` (not zero).
    pub fn new(capacity: u64, idle: Duration, recheck: Duration) -> Self {
        Self {
            table: Arc::new(Table {
                cells: Mutex::default(),
                round: AtomicU64::new(0),
                last_round: Mutex::new(tokio::time::Instant::now()),
            }),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
            idle_rounds: (idle.as_secs() / recheck.as_secs().max(1)).max(1) + 1,
            recheck,
            alive: Arc::new(()),
        }
    }

    /// Keeps the table of the configuration this one replaces: a reload does not forget who
    /// was disabled. This configuration's capacity applies to it from now on (a smaller one at
    /// the next login made room for).
    pub fn inherit(&mut self, old: &Standing) {
        self.table = old.table.clone();
    }

    /// The cell of `login`, made when first seen. A table look-up: once per token, when it is
    /// validated, not at each request.
    pub fn cell(&self, login: &str) -> Arc<Cell> {
        let mut cells = self.table.lock();
        if let Some(Entry(cell)) = cells.get(login) {
            return cell.clone();
        }
        let round = self.table.round.load(Ordering::Relaxed);
        if cells.len() >= self.capacity {
            make_room(&mut cells, self.capacity, round);
        }
        let cell = Arc::new(Cell {
            login: login.into(),
            known: ArcSwap::new(PENDING.clone()),
            seen: AtomicU64::new(round),
        });
        cells.insert(Entry(cell.clone()));
        cell
    }

    /// The verdict of `cell` (one of this table's, or one it dropped) for a token carrying
    /// `profile`: see [`Verdict`].
    pub fn verdict(&self, cell: &Cell, profile: &str) -> Verdict {
        cell.verdict(profile, self.table.round.load(Ordering::Relaxed))
    }

    /// Looks every login of the table up again, every `recheck`, until the configuration
    /// that started it is gone. Run it on the runtime.
    pub fn start(&self, directory: Arc<dyn Directory>) {
        let table = self.table.clone();
        let idle_rounds = self.idle_rounds;
        let alive: Weak<()> = Arc::downgrade(&self.alive);
        let recheck = self.recheck;
        tokio::spawn(async move {
            let last = *table.last_round.lock().unwrap_or_else(|e| e.into_inner());
            let first = (last + recheck).max(tokio::time::Instant::now());
            let mut tick = tokio::time::interval_at(first, recheck);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if alive.strong_count() == 0 {
                    return;
                }
                *table.last_round.lock().unwrap_or_else(|e| e.into_inner()) =
                    tokio::time::Instant::now();
                refresh(&table, idle_rounds, &*directory).await;
            }
        });
    }

    /// Looks every login up once, now.
    #[cfg(test)]
    async fn refresh_now(&self, directory: &dyn Directory) {
        refresh(&self.table, self.idle_rounds, directory).await;
    }

    /// Logins in the table.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().len()
    }
}

/// A full table drops an eighth of its logins at once (so that the next inserts find room
/// without a sweep each). A dropped cell says so, and the tokens holding it fetch a new one,
/// which stands on the tokens' word until the next round: so those the directory has said
/// nothing of yet go first (dropping them loses nothing), then those it allowed (a changed
/// profile would fall back to the tokens' until the next round), and those it refused last
/// (their tokens would be let in meanwhile); within each, those not read in this round first.
#[expect(
    clippy::mutable_key_type,
    reason = "an entry hashes and compares by its cell's login, which never changes"
)]
fn make_room(cells: &mut Cells, capacity: usize, round: u64) {
    let target = capacity - capacity.div_ceil(8);
    fn idle(c: &Cell, round: u64) -> bool {
        c.seen.load(Ordering::Relaxed) < round
    }
    let passes: [fn(&Cell, u64) -> bool; 5] = [
        |c, round| c.is_pending() && idle(c, round),
        |c, _| c.is_pending(),
        |c, round| !c.is_refused() && idle(c, round),
        |c, _| !c.is_refused(),
        |_, _| true,
    ];
    let mut len = cells.len();
    for evictable in passes {
        if len <= target {
            break;
        }
        cells.retain(|Entry(cell)| {
            let go = len > target && evictable(cell, round);
            if go {
                cell.evict();
                len -= 1;
            }
            !go
        });
    }
}

/// One round: logins idle for `idle_rounds` leave the table; the others are looked up.
async fn refresh(table: &Table, idle_rounds: u64, directory: &dyn Directory) {
    let now = table.round.fetch_add(1, Ordering::Relaxed) + 1;
    let mut cells: Vec<Arc<Cell>> = Vec::new();
    table.lock().retain(|Entry(cell)| {
        if now.saturating_sub(cell.seen.load(Ordering::Relaxed)) > idle_rounds {
            cell.evict();
            return false;
        }
        cells.push(cell.clone());
        true
    });
    if cells.is_empty() {
        return;
    }
    let logins: Vec<&str> = cells.iter().map(|cell| &*cell.login).collect();
    let users = match directory.lookup_many(&logins).await {
        Ok(users) => users,
        // The directory says why in its own log; the last known states stand.
        Err(_) => return,
    };
    for (cell, user) in cells.iter().zip(users) {
        let known = match user.as_ref().and_then(User::login_profile) {
            Some(profile) => Known::Allowed(profile.into()),
            None => Known::Refused,
        };
        if known == Known::Refused && **cell.known.load() != Known::Refused {
            tracing::info!(
                login = &*cell.login,
                "the directory no longer allows this login: its tokens are refused"
            );
        }
        if **cell.known.load() != known {
            cell.known.store(Arc::new(known));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::GateError;
    use futures_util::future::BoxFuture;
    use std::sync::Mutex;

    /// A directory whose answers a test changes.
    #[derive(Debug, Default)]
    struct Changing {
        users: Mutex<Vec<User>>,
        down: Mutex<bool>,
    }

    impl Directory for Changing {
        fn lookup<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<Option<User>, GateError>> {
            let found = self
                .users
                .lock()
                .unwrap()
                .iter()
                .find(|u| u.login == login)
                .cloned();
            let down = *self.down.lock().unwrap();
            Box::pin(async move {
                if down {
                    return Err(GateError::DirectoryUnavailable(5));
                }
                Ok(found)
            })
        }

        fn verify_password<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<User>, GateError>> {
            Box::pin(async { Ok(None) })
        }

        fn describe(&self) -> String {
            "changing".into()
        }
    }

    fn user(login: &str, enabled: bool, profile: Option<&str>) -> User {
        User {
            login: login.into(),
            cti_enabled: enabled,
            profile: profile.map(Into::into),
            name: None,
        }
    }

    fn standing() -> Standing {
        Standing::new(100, Duration::from_secs(300), Duration::from_secs(60))
    }

    #[tokio::test]
    async fn access_follows_the_directory_and_survives_its_outages() {
        let directory = Changing::default();
        *directory.users.lock().unwrap() = vec![user("alice", true, Some("agent"))];
        let standing = standing();
        let cell = standing.cell("alice");
        // First sight: the token's word.
        assert_eq!(standing.verdict(&cell, "agent"), Verdict::Stands);
        standing.refresh_now(&directory).await;
        assert_eq!(standing.verdict(&cell, "agent"), Verdict::Stands);
        // The profile changes: requests act on the new one.
        *directory.users.lock().unwrap() = vec![user("alice", true, Some("supervisor"))];
        standing.refresh_now(&directory).await;
        assert_eq!(
            standing.verdict(&cell, "agent"),
            Verdict::Profile("supervisor".into())
        );
        // The directory goes down: the last known state stands.
        *directory.down.lock().unwrap() = true;
        standing.refresh_now(&directory).await;
        assert_eq!(
            standing.verdict(&cell, "agent"),
            Verdict::Profile("supervisor".into())
        );
        *directory.down.lock().unwrap() = false;
        // Disabled, then without a profile, then deleted: refused each time.
        for now in [
            vec![user("alice", false, Some("agent"))],
            vec![user("alice", true, None)],
            vec![],
        ] {
            *directory.users.lock().unwrap() = now;
            standing.refresh_now(&directory).await;
            assert_eq!(standing.verdict(&cell, "agent"), Verdict::Refused);
        }
        // Back: allowed again, and the same cell for every token of the login.
        *directory.users.lock().unwrap() = vec![user("alice", true, Some("agent"))];
        standing.refresh_now(&directory).await;
        assert_eq!(standing.verdict(&cell, "agent"), Verdict::Stands);
        assert!(Arc::ptr_eq(&cell, &standing.cell("alice")));
    }

    /// A reload starts a new round task: the next round stays due `recheck` after the last
    /// one, not after the reload (reloads more often than `recheck` would put it off forever).
    #[tokio::test(start_paused = true)]
    async fn a_reload_does_not_put_off_the_next_round() {
        let directory = Arc::new(Changing::default());
        *directory.users.lock().unwrap() = vec![user("alice", true, Some("agent"))];
        let first = standing();
        let cell = first.cell("alice");
        first.start(directory.clone());
        tokio::time::sleep(Duration::from_secs(40)).await;
        *directory.users.lock().unwrap() = vec![];
        let mut second = standing();
        second.inherit(&first);
        drop(first);
        second.start(directory.clone());
        // 65 s after the table was made: the round due at 60 s has run.
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(second.verdict(&cell, "agent"), Verdict::Refused);
    }

    #[tokio::test]
    async fn idle_logins_leave_the_table_and_their_cells_say_so() {
        let directory = Changing::default();
        let standing = Standing::new(100, Duration::from_secs(120), Duration::from_secs(60));
        let cell = standing.cell("idle");
        for _ in 0..standing.idle_rounds + 1 {
            assert!(!cell.is_evicted());
            standing.refresh_now(&directory).await;
        }
        assert!(cell.is_evicted());
        // A request still holding the dropped cell does not bring it back.
        standing.verdict(&cell, "agent");
        assert!(cell.is_evicted());
        // Read in every round: stays.
        let busy = standing.cell("busy");
        for _ in 0..standing.idle_rounds + 3 {
            standing.verdict(&busy, "agent");
            standing.refresh_now(&directory).await;
        }
        assert!(!busy.is_evicted());
    }

    #[tokio::test]
    async fn a_full_table_makes_room_without_forgetting_refusals() {
        // Knows nobody yet: after a round, the four first logins are refused.
        let directory = Changing::default();
        let standing = Standing::new(8, Duration::from_secs(3600), Duration::from_secs(60));
        let refused: Vec<_> = (0..4).map(|i| standing.cell(&format!("r{i}"))).collect();
        standing.refresh_now(&directory).await;
        let cells: Vec<_> = (0..20).map(|i| standing.cell(&format!("u{i}"))).collect();
        assert_eq!(standing.len(), 8);
        // Dropped cells say so (their tokens fetch a fresh one); refusals stay.
        assert_eq!(cells.iter().filter(|c| c.is_evicted()).count(), 20 - 4);
        for (i, cell) in refused.iter().enumerate() {
            assert_eq!(standing.verdict(cell, "agent"), Verdict::Refused);
            assert!(Arc::ptr_eq(cell, &standing.cell(&format!("r{i}"))));
        }
        assert!(Arc::ptr_eq(&cells[19], &standing.cell("u19")));
        // A login read in this round stays before those that were not.
        *directory.users.lock().unwrap() = (0..20)
            .map(|i| user(&format!("u{i}"), true, Some("agent")))
            .collect();
        standing.refresh_now(&directory).await;
        standing.verdict(&cells[19], "agent");
        let unread: Vec<_> = cells[..19].iter().filter(|c| !c.is_evicted()).collect();
        assert_eq!(unread.len(), 3);
        standing.cell("new");
        assert_eq!(unread.iter().filter(|c| c.is_evicted()).count(), 1);
        assert!(!cells[19].is_evicted());
        assert_eq!(standing.len(), 8);
    }

    #[tokio::test]
    async fn refusals_are_the_last_to_go() {
        let directory = Changing::default();
        *directory.users.lock().unwrap() = vec![user("ok", true, Some("agent"))];
        // Seven refused logins and one allowed, read in this round: the allowed one goes.
        // Ten tables, each iterated in its own order.
        for _ in 0..10 {
            let standing = Standing::new(8, Duration::from_secs(3600), Duration::from_secs(60));
            let refused: Vec<_> = (0..7).map(|i| standing.cell(&format!("r{i}"))).collect();
            let ok = standing.cell("ok");
            standing.refresh_now(&directory).await;
            assert_eq!(standing.verdict(&ok, "agent"), Verdict::Stands);
            standing.cell("new");
            assert!(ok.is_evicted());
            assert!(refused.iter().all(|c| !c.is_evicted()));
        }
    }

    #[tokio::test]
    async fn a_full_table_drops_what_the_directory_has_not_answered_first() {
        let directory = Changing::default();
        *directory.users.lock().unwrap() = (0..4)
            .map(|i| user(&format!("a{i}"), true, Some("supervisor")))
            .collect();
        let standing = Standing::new(8, Duration::from_secs(3600), Duration::from_secs(60));
        let answered: Vec<_> = (0..4).map(|i| standing.cell(&format!("a{i}"))).collect();
        standing.refresh_now(&directory).await;
        // Not read since: idle, yet kept before logins the directory has not answered yet.
        let pending: Vec<_> = (0..4).map(|i| standing.cell(&format!("p{i}"))).collect();
        standing.cell("new0");
        assert_eq!(pending.iter().filter(|c| c.is_evicted()).count(), 1);
        for i in 1..8 {
            standing.cell(&format!("new{i}"));
        }
        assert_eq!(standing.len(), 8);
        for cell in &answered {
            assert!(!cell.is_evicted());
            assert_eq!(
                standing.verdict(cell, "agent"),
                Verdict::Profile("supervisor".into())
            );
        }
    }

    /// A reload that lowers `tokens.cache_capacity` bounds the inherited table too.
    #[test]
    fn a_reload_s_capacity_applies_to_the_inherited_table() {
        let old = Standing::new(100, Duration::from_secs(3600), Duration::from_secs(60));
        for i in 0..50 {
            old.cell(&format!("u{i}"));
        }
        let mut new = Standing::new(8, Duration::from_secs(3600), Duration::from_secs(60));
        new.inherit(&old);
        new.cell("next");
        assert!(new.len() <= 8, "{} logins", new.len());
    }

    #[tokio::test]
    async fn a_reload_keeps_what_the_directory_said() {
        let directory = Changing::default();
        let old = standing();
        old.cell("bob");
        old.refresh_now(&directory).await;
        let mut new = standing();
        new.inherit(&old);
        assert_eq!(new.verdict(&new.cell("bob"), "agent"), Verdict::Refused);
    }
}
