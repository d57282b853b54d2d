//! `cargo xtask soak --minutes N [--sample-seconds S]`: the long soak (see `memmon_tests::soak`).
//! Prints a row per sample and the verdict; exits 1 when a criterion fails, 2 on bad arguments.

use memmon_tests::soak::{self, Config};

const USAGE: &str = "usage: memmon-soak [--minutes N] [--sample-seconds S] [--rate ALLOCATIONS_PER_SECOND]";

fn main() {
    let config = parse(std::env::args().skip(1).collect()).unwrap_or_else(|err| {
        eprintln!("memmon-soak: {err}\n{USAGE}");
        std::process::exit(2);
    });
    let outcome = soak::run(&config, &mut std::io::stdout());
    print!("{}", outcome.verdict());
    std::process::exit(if outcome.passed() { 0 } else { 1 });
}

fn parse(args: Vec<String>) -> Result<Config, String> {
    let (mut minutes, mut sample_seconds, mut rate) = (60.0, 60, None);
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag} {value:?}: not {what}");
        match flag.as_str() {
            "--minutes" => minutes = value.parse().ok().filter(|m: &f64| m.is_finite() && *m > 0.0).ok_or_else(|| bad("a positive number"))?,
            "--sample-seconds" => sample_seconds = value.parse().ok().filter(|s| *s > 0).ok_or_else(|| bad("a positive integer"))?,
            "--rate" => rate = Some(value.parse().ok().filter(|r| *r >= 100).ok_or_else(|| bad("an integer ≥ 100"))?),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let mut config = Config::long(minutes, sample_seconds);
    if config.duration < config.sample_every * (config.bounds.warmup_samples as u32 + 3) {
        return Err(format!(
            "{minutes} minutes hold fewer than {} samples of {sample_seconds} s: the criteria need the warm-up and 3 more",
            config.bounds.warmup_samples + 3
        ));
    }
    if let Some(rate) = rate {
        config.rate = rate;
    }
    Ok(config)
}
