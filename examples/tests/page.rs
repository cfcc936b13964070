//! `GET /`: the live page (SPEC §15), loaded in a real headless Chromium (Debian's
//! `chromium`, which `scripts/setup.sh` installs) against a server under load: the numbers
//! it renders move from one load to the next, its charts have points, and a screenshot is
//! saved (`docs/images/live-page.png` is one).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::InProcess;

/// How long one Chromium run may take, start-up included.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
/// Virtual time each load gets: the page polls once a second, so about six samples (and
/// the wall time they take is what the fetches take, not six seconds).
const VIRTUAL_TIME_MS: u64 = 6_000;
const CARDS: u64 = 1_000;

/// Debian's `chromium` on the `PATH`.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed: run scripts/setup.sh (it installs Debian's chromium)"
            )
        })
}

/// Runs headless Chromium on `url` with `args`, for [`VIRTUAL_TIME_MS`] of the page's
/// time, and returns what it printed.
fn browse(profile: &Path, url: &str, args: &[String]) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    while child.try_wait().expect("chromium's status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium took longer than {BROWSER_TIMEOUT:?} on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("chromium's output");
    assert!(output.status.success(), "chromium failed: {:?}", output.status);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of attribute `name` of the element with id `id` in a dumped DOM.
fn attribute(dom: &str, id: &str, name: &str) -> String {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let start = dom[..at].rfind('<').expect("the element's tag");
    let end = at + dom[at..].find('>').expect("the tag's end");
    let tag = &dom[start..end];
    let key = format!("{name}=\"");
    let value = tag.find(&key).map(|from| &tag[from + key.len()..]).unwrap_or("");
    value.split('"').next().unwrap_or("").to_string()
}

fn number(dom: &str, id: &str, name: &str) -> u64 {
    let text = attribute(dom, id, name);
    text.parse().unwrap_or_else(|_| panic!("#{id} {name}={text:?} is a number: {dom}"))
}

/// Pays on random cards (some unknown, some over their ceiling) in pipelines of 64, and
/// runs an epoch now and then, until `stop`.
fn load(server: &InProcess, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let mut redis = server.redis();
    std::thread::spawn(move || {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut pays = 0;
        let mut rounds = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut pipe = redis::pipe();
            for _ in 0..64 {
                let card = next() % (CARDS + CARDS / 20);
                pipe.cmd("PAY").arg(card).arg(1 + next() % 3_000).ignore();
            }
            pipe.query::<()>(&mut redis).expect("the pays are answered");
            pays += 64;
            rounds += 1;
            if rounds.is_multiple_of(200) {
                redis::cmd("BATCH.RUN").arg("eu-west").query::<redis::Value>(&mut redis).ok();
            }
            // Leaves the machine's other core some room: the browser runs beside it.
            std::thread::sleep(Duration::from_millis(2));
        }
        pays
    })
}

#[test]
fn the_live_page_shows_the_numbers_moving_in_chromium() {
    let browser = chromium();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data_dir = dir.path().join("data");
    let cards = CARDS.to_string();
    let server = InProcess::start(&[
        "--data-dir",
        data_dir.to_str().expect("a UTF-8 path"),
        "--durability",
        "sync",
        "--populate",
        &cards,
        "--clock",
        "manual",
        "--shards",
        "2",
        "--metrics-port",
        "0",
    ]);
    let url = format!("http://{}/", server.metrics_addr.expect("a metrics address"));
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(&server, stop.clone());

    let profile = dir.path().join("profile");
    let dump = ["--dump-dom".to_string()];
    let first = browse(&profile, &url, &dump);
    assert!(first.contains("health: ok"), "{first}");
    let paid_first = number(&first, "payments-total", "data-value");
    let points = number(&first, "chart-payments", "data-points");
    assert!(points >= 2, "the payments chart has points after a few polls: {points}");
    // Drawn, though under virtual time two polls may fall in one batch's time: no point.
    number(&first, "chart-latency", "data-points");
    assert!(number(&first, "chart-queues", "data-points") >= 2, "{first}");
    number(&first, "payments-rate", "data-value"); // a number: pays in the last interval
    assert!(first.contains("<td>eu-west</td>") && first.contains("<td>TOTAL</td>"), "{first}");
    assert!(first.contains("CEILING_EXCEEDED"), "the declines table: {first}");
    assert!(first.contains("<th>open holds</th>"), "the holds of §12 per region: {first}");

    // The second load also saves the screenshot, from the same run.
    let screenshot = std::env::var_os("PLAFOND_PAGE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page.png"));
    let _ = std::fs::remove_file(&screenshot);
    let shot = [
        "--dump-dom".to_string(),
        format!("--screenshot={}", screenshot.display()),
        "--window-size=1280,1000".into(),
    ];
    let second = browse(&profile, &url, &shot);
    let paid_second = number(&second, "payments-total", "data-value");
    assert!(paid_second > paid_first, "payments moved: {paid_first} then {paid_second}");
    stop.store(true, Ordering::Relaxed);
    let paid = loader.join().expect("the load ran");
    let png = std::fs::read(&screenshot).expect("chromium saved the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{} bytes", png.len());
    eprintln!(
        "{} saw {paid_first} then {paid_second} payments of {paid} sent; screenshot {}",
        browser.display(),
        screenshot.display()
    );
}
