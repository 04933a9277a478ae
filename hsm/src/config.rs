//! `hsm.toml`: what `tidepool hsm run --config` reads. Every field has a
//! default, so `tidepool hsm run --tier URL` alone is a working HSM (one
//! without a policy: files move when asked). `[policy]`, even empty, turns
//! the watermark policy on:
//!
//! ```toml
//! fs = [1]                 # file systems managed
//! workers = 4              # recalls and requests at once
//!
//! [tier]
//! url = "s3://bucket/prefix"   # or file:///dir
//! timeout_secs = 30            # a tier call's bound: then the access gets EIO
//! max_mib_per_sec = 0          # all transfers together at most this (0: no limit)
//!
//! [policy]
//! high_watermark = 90      # percent of the volume used that starts migration
//! low_watermark = 80       # ... and where it stops
//! interval_secs = 60       # how often usage is looked at (and on nospace)
//! min_size = "64K"         # files smaller are left alone
//! max_size = "1T"
//! min_age_secs = 3600      # not read or written for this long
//! include = ["/data/**"]   # paths on the mount; none: every file
//! exclude = ["**.tmp"]
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::{HsmError, HsmResult};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub fs: Vec<u64>,
    pub workers: usize,
    pub tier: TierConfig,
    /// None: no watermark policy (and no nospace disposition); files move
    /// only when asked.
    pub policy: Option<Policy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierConfig {
    pub url: String,
    pub timeout_secs: u64,
    pub max_mib_per_sec: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub high_watermark: u8,
    pub low_watermark: u8,
    pub interval_secs: u64,
    pub min_size: Size,
    pub max_size: Size,
    pub min_age_secs: u64,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// A byte count: a number, or a string with a K/M/G/T (binary) suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeRepr")]
pub struct Size(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    N(u64),
    S(String),
}

impl TryFrom<SizeRepr> for Size {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Size, String> {
        match r {
            SizeRepr::N(n) => Ok(Size(n)),
            SizeRepr::S(s) => Size::parse(&s).ok_or_else(|| format!("size {s:?}: a number with K, M, G or T")),
        }
    }
}

impl Size {
    pub fn parse(s: &str) -> Option<Size> {
        let s = s.trim();
        let (num, shift) = match s.char_indices().last()? {
            (i, 'K' | 'k') => (&s[..i], 10),
            (i, 'M' | 'm') => (&s[..i], 20),
            (i, 'G' | 'g') => (&s[..i], 30),
            (i, 'T' | 't') => (&s[..i], 40),
            _ => (s, 0),
        };
        num.trim().parse::<u64>().ok()?.checked_mul(1 << shift).map(Size)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config { fs: vec![1], workers: 4, tier: TierConfig::default(), policy: None }
    }
}

impl Default for TierConfig {
    fn default() -> TierConfig {
        TierConfig { url: String::new(), timeout_secs: 30, max_mib_per_sec: 0 }
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            high_watermark: 90,
            low_watermark: 80,
            interval_secs: 60,
            min_size: Size(0),
            max_size: Size(u64::MAX),
            min_age_secs: 0,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

impl Config {
    pub fn parse(text: &str) -> HsmResult<Config> {
        let c: Config = toml::from_str(text).map_err(|e| HsmError::Request(format!("hsm.toml: {e}")))?;
        c.check()?;
        Ok(c)
    }

    pub fn load(p: &Path) -> HsmResult<Config> {
        let text = std::fs::read_to_string(p).map_err(|e| HsmError::Request(format!("{}: {e}", p.display())))?;
        Config::parse(&text)
    }

    pub fn check(&self) -> HsmResult<()> {
        let bad = |s: String| Err(HsmError::Request(format!("hsm.toml: {s}")));
        if self.tier.url.is_empty() {
            return bad("no tier: [tier] url = \"file:///dir\" or \"s3://bucket/prefix\"".into());
        }
        let p = self.policy.clone().unwrap_or_default();
        if !(p.low_watermark < p.high_watermark && p.high_watermark <= 100) {
            return bad(format!(
                "watermarks {}..{}: low below high, high at most 100",
                p.low_watermark, p.high_watermark
            ));
        }
        if p.min_size.0 > p.max_size.0 || self.tier.timeout_secs == 0 || p.interval_secs == 0 {
            return bad("min_size above max_size, or a zero timeout or interval".into());
        }
        if self.fs.is_empty() {
            return bad("no file system".into());
        }
        Ok(())
    }

    pub fn tier_timeout(&self) -> Duration {
        Duration::from_secs(self.tier.timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_and_defaults() {
        let c = Config::parse(
            "fs = [1, 2]\n[tier]\nurl = \"file:///t\"\n[policy]\nhigh_watermark = 70\nlow_watermark = 50\n\
             min_size = \"64K\"\nmax_size = 1048576\ninclude = [\"/a/**\"]\n",
        )
        .unwrap();
        assert_eq!((c.fs, c.workers, c.tier.timeout_secs), (vec![1, 2], 4, 30));
        let p = c.policy.unwrap();
        assert_eq!((p.high_watermark, p.low_watermark), (70, 50));
        assert_eq!((p.min_size, p.max_size), (Size(65536), Size(1 << 20)));
        assert_eq!(p.include, ["/a/**"]);
        let d = Config::parse("[tier]\nurl = \"file:///t\"\n[policy]\n").unwrap();
        assert_eq!(d.policy.unwrap().high_watermark, 90);
        assert!(Config::parse("[tier]\nurl = \"file:///t\"").unwrap().policy.is_none());
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        for (text, why) in [
            ("", "no tier"),
            ("[tier]\nurl = \"file:///t\"\n[policy]\nhigh_watermark = 50\nlow_watermark = 60", "watermarks"),
            ("[tier]\nurl = \"file:///t\"\n[policy]\nmin_size = \"12X\"", "size"),
            ("[tier]\nurl = \"file:///t\"\nworkerz = 3", "unknown field"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        assert_eq!(Size::parse("2G"), Some(Size(2 << 30)));
        assert_eq!(Size::parse("k"), None);
    }
}
