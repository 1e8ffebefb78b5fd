//! `cargo xtask fuzz [TARGET…] [--seconds N]`: builds the libFuzzer targets of `fuzz/` with
//! coverage instrumentation (the flags cargo-fuzz passes, without a sanitizer: the parsers are
//! safe Rust, and a crash is a panic), then runs each from its corpus for N seconds, two at a
//! time, with libFuzzer's own bounds on time per input and memory. Fails on a crash, a timeout
//! or an out-of-memory, leaving the input under `target/fuzz/artifacts/<target>/`: commit it
//! to `fuzz/corpus/<target>/` (with a unit test) so that it is checked forever after.
//!
//! Corpus: the seeds made here from the project's fixtures (`target/fuzz/seeds/`), the committed
//! inputs (`fuzz/corpus/`), and what earlier runs found (`target/fuzz/corpus/`, kept between
//! runs on one machine). Prints a table: runs, coverage (`cov`: edges, `ft`: features), corpus.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

use crate::{run::root, setup};

/// The targets, as `fuzz/Cargo.toml` names them.
pub const TARGETS: &[&str] = &[
    "frp_config",
    "frp_api",
    "proc_files",
    "tracefs_format",
    "mountinfo",
    "sock_diag",
    "http_query",
    "agent_config",
    "alert_rules",
    "web_config",
    "history_rows",
    "exposition",
];

/// The coverage flags cargo-fuzz sets (`--sanitizer none`), and `cfg(fuzzing)`.
const RUSTFLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions \
    -Coverflow-checks -Ccodegen-units=16";

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

#[derive(clap::Args)]
pub struct Opts {
    /// Only these targets; default all.
    pub targets: Vec<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Targets run at once.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Build optimised, for long runs (the default unoptimised build takes ≈ 1.5 minutes from
    /// scratch here).
    #[arg(long)]
    pub release: bool,
}

/// What one run printed last.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub runs: u64,
    pub cov: u64,
    pub ft: u64,
    pub corpus: u64,
}

/// Builds and runs the targets; the stats per target. Fails when one found something.
pub fn run(opts: &Opts) -> anyhow::Result<BTreeMap<String, Stats>> {
    for t in &opts.targets {
        ensure!(
            TARGETS.contains(&t.as_str()),
            "no fuzz target `{t}`; there are: {}",
            TARGETS.join(", ")
        );
    }
    let targets: Vec<&str> = if opts.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        TARGETS
            .iter()
            .copied()
            .filter(|t| opts.targets.iter().any(|o| o == t))
            .collect()
    };
    let work = root().join("target/fuzz");
    let bins = build(&work, opts.release)?;
    let seeds = work.join("seeds");
    write_seeds(&root(), &seeds)?;
    let mut results = BTreeMap::new();
    let mut failed = Vec::new();
    for batch in targets.chunks(opts.jobs.max(1)) {
        let running: Vec<(&str, Child, PathBuf)> = batch
            .iter()
            .map(|t| start(&work, &bins, t, opts.seconds).map(|(c, log)| (*t, c, log)))
            .collect::<anyhow::Result<_>>()?;
        for (t, mut child, log) in running {
            let status = child.wait()?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if !status.success() {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!(
                    "xtask: fuzz target {t} failed ({status}); the end of {}:\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
                failed.push(t);
            }
            results.insert(t.to_owned(), stats(&text));
        }
    }
    println!(
        "{:<16} {:>10} {:>7} {:>7} {:>7}",
        "fuzz target", "runs", "cov", "ft", "corpus"
    );
    for (t, s) in &results {
        println!(
            "{t:<16} {:>10} {:>7} {:>7} {:>7}",
            s.runs, s.cov, s.ft, s.corpus
        );
    }
    if !failed.is_empty() {
        bail!(
            "fuzzing found a crash, timeout or out-of-memory in {} (inputs under {}/artifacts)",
            failed.join(", "),
            work.display()
        );
    }
    Ok(results)
}

/// The instrumented build of every target, in its own target directory (other flags), without
/// debug info or LTO (the workspace's release profile links with thin LTO: a minute a binary);
/// where the binaries are.
fn build(work: &Path, release: bool) -> anyhow::Result<PathBuf> {
    let profile = if release { "release" } else { "dev" };
    let env = format!("CARGO_PROFILE_{}_", profile.to_ascii_uppercase());
    setup::sh(
        setup::cargo()
            .current_dir(root())
            .args([
                "build",
                "--profile",
                profile,
                "-p",
                "moonfrp-fuzz",
                "--bins",
                "--target",
                TRIPLE,
            ])
            .env("CARGO_TARGET_DIR", work.join("build"))
            .env("RUSTFLAGS", RUSTFLAGS)
            .env(format!("{env}DEBUG"), "0")
            .env(format!("{env}LTO"), "false")
            .env(format!("{env}INCREMENTAL"), "false"),
    )
    .context("building the fuzz targets")?;
    Ok(work
        .join("build")
        .join(TRIPLE)
        .join(if release { "release" } else { "debug" }))
}

/// Starts one target; its output goes to a log file.
fn start(work: &Path, bins: &Path, target: &str, seconds: u64) -> anyhow::Result<(Child, PathBuf)> {
    let bin = bins.join(target);
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d)?;
    }
    let committed = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&committed)?;
    let log = work.join(format!("{target}.log"));
    let child = Command::new(&bin)
        .arg(&corpus)
        .arg(work.join("seeds").join(target))
        .arg(&committed)
        .arg(format!("-max_total_time={seconds}"))
        // Bounds: a second per input, 2 GiB of memory, inputs up to 64 KiB.
        .args([
            "-timeout=1",
            "-rss_limit_mb=2048",
            "-max_len=65536",
            "-print_final_stats=1",
        ])
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    eprintln!("xtask: fuzzing {target} for {seconds} s");
    Ok((child, log))
}

/// The last `#N … cov: C ft: F corp: K/…` status line, and the final run count.
fn stats(log: &str) -> Stats {
    let mut s = Stats::default();
    let num = |line: &str, key: &str| -> Option<u64> {
        let rest = line.split(key).nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())?
            .parse()
            .ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix('#') {
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                s.runs = n;
            }
            s.cov = num(line, "cov: ").unwrap_or(s.cov);
            s.ft = num(line, "ft: ").unwrap_or(s.ft);
            s.corpus = num(line, "corp: ").unwrap_or(s.corpus);
        }
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            s.runs = n.trim().parse().unwrap_or(s.runs);
        }
    }
    s
}

/// One seed: the target, the selector byte the target reads first (if any), the bytes.
type Seed = (&'static str, Option<u8>, Vec<u8>);

/// Seeds from the project's fixtures and a few written here, each file prefixed with the
/// selector byte its target reads first.
fn write_seeds(root: &Path, out: &Path) -> anyhow::Result<()> {
    let mut seeds = fixture_seeds(root)?;
    seeds.extend(written_seeds(root)?);
    let _ = std::fs::remove_dir_all(out);
    for (i, (target, sel, bytes)) in seeds.into_iter().enumerate() {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        let mut data = sel.map_or_else(Vec::new, |s| vec![s]);
        data.extend(bytes);
        std::fs::write(dir.join(format!("seed-{i:03}")), data)?;
    }
    for t in TARGETS {
        std::fs::create_dir_all(out.join(t))?;
    }
    Ok(())
}

/// Seeds that are the project's fixture files (frp configs and answers, /proc, mountinfo,
/// tracefs formats).
fn fixture_seeds(root: &Path) -> anyhow::Result<Vec<Seed>> {
    let f = |rel: &str| -> anyhow::Result<Vec<u8>> {
        let path = root.join("moonfrp-agent/tests/fixtures").join(rel);
        std::fs::read(&path).with_context(|| format!("seed {}", path.display()))
    };
    let mut seeds: Vec<Seed> = Vec::new();
    for (sel, file) in [
        (0, "frp/frpc-home.toml"),
        (0, "frp/frps.toml"),
        (1, "frp/frpc-home.yaml"),
        (2, "frp/frps.json"),
        (3, "frp/frpc-legacy.ini"),
        (3, "frp/frps-legacy.ini"),
    ] {
        seeds.push(("frp_config", Some(sel), f(file)?));
    }
    for (sel, file) in [
        (0, "frp/frps-api-v1-proxy-tcp.json"),
        (0, "frp/frps-api-v1-proxy-tcp-legacy-0.51.json"),
        (4, "frp/frps-api-v1-proxy-udp.json"),
        (1, "frp/frps-api-v2-proxies.json"),
        (2, "frp/frps-api-v1-serverinfo.json"),
        (3, "frp/frpc-api-status.json"),
    ] {
        seeds.push(("frp_api", Some(sel), f(file)?));
    }
    let joined = |files: &[&str]| -> anyhow::Result<Vec<u8>> {
        let parts: Vec<Vec<u8>> = files.iter().map(|p| f(p)).collect::<Result<_, _>>()?;
        Ok(parts.join(&0u8))
    };
    let proc_seeds: Vec<(u8, Vec<u8>)> = vec![
        (0, f("proc/stat")?),
        (1, f("proc/meminfo")?),
        (2, joined(&["proc/loadavg", "proc/uptime", "proc/file-nr"])?),
        (3, f("proc/net_dev")?),
        (3, f("proc/net_dev_odd")?),
        (4, joined(&["proc/net_snmp", "proc/net_netstat"])?),
        (5, f("proc/diskstats")?),
        (5, f("proc/diskstats_odd")?),
        (6, f("mountinfo/hybrid.txt")?),
        (7, f("systemd/show.txt")?),
        (8, b"frpc\0-c\0/etc/frp/frpc.toml".to_vec()),
        (9, b"usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n".to_vec()),
        (9, b"some avg10=0.00 avg60=0.00 avg300=0.00 total=12\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=3\n".to_vec()),
        (10, b"8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n".to_vec()),
        (10, b"8:0 Read 4096\n8:0 Write 8192\nTotal 12288\n".to_vec()),
        (11, format!("system.slice\0docker-{}.scope", "ab".repeat(32)).into_bytes()),
    ];
    for (sel, bytes) in proc_seeds {
        seeds.push(("proc_files", Some(sel), bytes));
    }
    for kernel in ["6.18", "6.1", "5.10"] {
        let dir = root
            .join("moonfrp-agent/tests/fixtures/tracefs")
            .join(kernel);
        for entry in walk(&dir)? {
            seeds.push(("tracefs_format", Some(0), std::fs::read(entry)?));
        }
    }
    seeds.push(("mountinfo", None, f("mountinfo/hybrid.txt")?));
    seeds.push(("mountinfo", None, f("mountinfo/pure-v2.txt")?));
    Ok(seeds)
}

/// Seeds written here: a netlink dump, API queries and headers, configs, rows, names.
fn written_seeds(root: &Path) -> anyhow::Result<Vec<Seed>> {
    let mut seeds: Vec<Seed> = vec![("sock_diag", None, sock_diag_dump())];
    for (sel, q) in [
        (
            0,
            "metric=moonfrp_tunnel_receive_bytes_total&tunnel=web&since=6h&step=5m&rate=true&agg=max&format=csv",
        ),
        (0, "metric=moonfrp_system_load1&from=now-1h&to=now"),
        (1, "level=warn&since=1796000000&limit=10&wait=5s"),
        (
            2,
            "alertname=TunnelDown&tunnel=web&event=firing&from=now-1h&to=now&limit=5",
        ),
        (3, "seconds=4&limit=10"),
        (4, "deflate, gzip;q=0.5"),
        (5, "Basic YWxpY2U6czNjcmV0"),
    ] {
        seeds.push(("http_query", Some(sel), q.as_bytes().to_vec()));
    }
    seeds.push((
        "agent_config",
        Some(0),
        std::fs::read(root.join("examples/moonfrp.toml"))?,
    ));
    seeds.push((
        "agent_config",
        Some(1),
        b"{{tunnel}} moves {{value}} B/s (limit {{threshold}})".to_vec(),
    ));
    seeds.push((
        "web_config",
        None,
        b"tls_server_config:\n  cert_file: agent.crt\n  key_file: agent.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\nbasic_auth_users:\n  alice: $2y$10$abcdefghijklmnopqrstuu5Zf3PzZ5uJ0n3t8a0zq5Z5dQb1rS4C.\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n".to_vec(),
    ));
    seeds.push((
        "history_rows",
        None,
        vec![3, 0x80, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06],
    ));
    seeds.push((
        "exposition",
        None,
        b"web\0ssh\0<img src onerror>\0a\"b\\c\nd\0\xe2\x80\xae".to_vec(),
    ));
    seeds.push(("alert_rules", None, vec![1; 64]));
    Ok(seeds)
}

/// Files under `dir`, recursively, sorted.
fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// A `sock_diag` answer as the kernel sends it: one IPv4 socket (127.0.0.1:6000, listening),
/// then `NLMSG_DONE`.
fn sock_diag_dump() -> Vec<u8> {
    let mut msg = Vec::new();
    // nlmsghdr: length, type SOCK_DIAG_BY_FAMILY (20), flags NLM_F_MULTI, seq, pid.
    msg.extend_from_slice(&88u32.to_le_bytes());
    msg.extend_from_slice(&20u16.to_le_bytes());
    msg.extend_from_slice(&2u16.to_le_bytes());
    msg.extend_from_slice(&[0; 8]);
    // inet_diag_msg: family, state (LISTEN), timer, retrans, then the socket id.
    msg.extend_from_slice(&[2, 10, 0, 0]);
    msg.extend_from_slice(&6000u16.to_be_bytes());
    msg.extend_from_slice(&0u16.to_be_bytes());
    msg.extend_from_slice(&[127, 0, 0, 1]);
    msg.extend_from_slice(&[0; 12]);
    msg.extend_from_slice(&[0; 16]);
    msg.extend_from_slice(&[0; 4 + 8]); // interface, cookie
    msg.extend_from_slice(&[0; 20]); // expires, rqueue, wqueue, uid, inode
    // NLMSG_DONE with its int.
    msg.extend_from_slice(&20u32.to_le_bytes());
    msg.extend_from_slice(&3u16.to_le_bytes());
    msg.extend_from_slice(&2u16.to_le_bytes());
    msg.extend_from_slice(&[0; 12]);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_are_read_from_libfuzzers_log() {
        let log = "#2\tINITED cov: 100 ft: 150 corp: 5/1024b exec/s: 0 rss: 40Mb\n\
                   #4096\tpulse  cov: 180 ft: 300 corp: 30/4Kb lim: 64 exec/s: 2048 rss: 60Mb\n\
                   #9000\tDONE   cov: 185 ft: 310 corp: 31/4Kb lim: 64 exec/s: 3000 rss: 61Mb\n\
                   stat::number_of_executed_units: 9001\n";
        assert_eq!(
            stats(log),
            Stats {
                runs: 9001,
                cov: 185,
                ft: 310,
                corpus: 31
            }
        );
    }

    #[test]
    fn every_target_is_built_and_has_seeds() {
        let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} not in fuzz/Cargo.toml"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        write_seeds(&root(), dir.path()).unwrap();
        for t in TARGETS {
            assert!(
                std::fs::read_dir(dir.path().join(t)).unwrap().count() > 0,
                "no seed for {t}"
            );
        }
        assert_eq!(sock_diag_dump().len(), 108);
    }
}
