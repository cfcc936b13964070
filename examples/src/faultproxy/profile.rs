//! Network profiles: what a link adds to a connection (delay, jitter, loss, bandwidth,
//! random cuts), and the named ones a benchmark picks (`lan`, `fibre`, `4g`, `3g`, `2g`).
//!
//! Round-trip times and bandwidths are WebPageTest's connectivity profiles
//! (`www/settings/connectivity.ini.sample` in WPO-Foundation/webpagetest): FIOS (fibre,
//! 20/5 Mbit/s, 4 ms), LTE (12/12 Mbit/s, 70 ms), Mobile 3G (1.6 Mbit/s / 768 kbit/s,
//! 300 ms), 2G (280/256 kbit/s, 800 ms). WebPageTest sets no loss and no jitter; ours are
//! our choice, in the range of 3GPP TS 23.203's packet error loss rates for non-GBR
//! bearers and of the jitter mobile operators publish (docs/BENCHMARKS.md says so too).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::limits::{CUT_MEAN_MAX, DELAY_MAX, RETRANSMIT_TIMEOUT_MIN};

/// What happens to a lost segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// As TCP sees a lost packet: it arrives one retransmission timeout late, and every
    /// byte behind it waits (head-of-line blocking). The stream stays intact.
    Retransmit,
    /// The segment's bytes are discarded: the receiver's stream has a hole (what a broken
    /// middlebox does; the server's parser must survive it).
    Discard,
}

/// A link's behaviour, the same in both directions except for the bandwidth.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// The name it was picked by (`custom` otherwise).
    pub name: String,
    /// The round-trip time the link adds: half of it each way.
    pub rtt: Duration,
    /// Each segment's one-way delay is the base plus a uniform draw in `0 ..= jitter`
    /// (never overtaking an earlier segment: TCP delivers in order).
    pub jitter: Duration,
    /// The probability a segment is lost, `0.0 ..= 1.0`.
    pub loss: f64,
    /// What a loss does.
    pub loss_kind: Loss,
    /// Client to upstream, bytes per second (`None`: no cap).
    pub up_bytes_per_s: Option<u64>,
    /// Upstream to client, bytes per second (`None`: no cap).
    pub down_bytes_per_s: Option<u64>,
    /// Each connection is cut (reset) after a random lifetime of this mean (exponential),
    /// `None`: never at random.
    pub cut_mean: Option<Duration>,
}

/// A profile refused: a name not known, or a figure out of range.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown network profile {0:?}: pick one of none, lan, fibre, 4g, 3g, 2g")]
    Unknown(String),
    #[error("network profile {name}: {what}")]
    OutOfRange { name: String, what: &'static str },
}

/// The names [`Profile::named`] knows.
pub const PROFILE_NAMES: [&str; 6] = ["none", "lan", "fibre", "4g", "3g", "2g"];

const fn kbit_per_s(kbit: u64) -> Option<u64> {
    Some(kbit * 1000 / 8)
}

impl Profile {
    /// A link that adds nothing (the proxy hop alone).
    pub fn none() -> Profile {
        Profile {
            name: "none".into(),
            rtt: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            loss_kind: Loss::Retransmit,
            up_bytes_per_s: None,
            down_bytes_per_s: None,
            cut_mean: None,
        }
    }

    /// One of [`PROFILE_NAMES`].
    pub fn named(name: &str) -> Result<Profile, ProfileError> {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let (rtt, jitter, loss, up, down) = match name {
            "none" => return Ok(Profile::none()),
            // A switched data-centre LAN: a fraction of a millisecond, 1 Gbit/s.
            "lan" => (us(500), us(100), 0.0, kbit_per_s(1_000_000), kbit_per_s(1_000_000)),
            "fibre" => (ms(4), ms(1), 0.0001, kbit_per_s(5_000), kbit_per_s(20_000)),
            "4g" => (ms(70), ms(15), 0.001, kbit_per_s(12_000), kbit_per_s(12_000)),
            "3g" => (ms(300), ms(50), 0.005, kbit_per_s(768), kbit_per_s(1_600)),
            "2g" => (ms(800), ms(150), 0.01, kbit_per_s(256), kbit_per_s(280)),
            other => return Err(ProfileError::Unknown(other.to_owned())),
        };
        let profile = Profile {
            name: name.to_owned(),
            rtt,
            jitter,
            loss,
            loss_kind: Loss::Retransmit,
            up_bytes_per_s: up,
            down_bytes_per_s: down,
            cut_mean: None,
        };
        profile.validated()
    }

    /// The profile, or why it cannot be used.
    pub fn validated(self) -> Result<Profile, ProfileError> {
        let refuse = |what| Err(ProfileError::OutOfRange { name: self.name.clone(), what });
        if self.rtt > DELAY_MAX || self.jitter > DELAY_MAX {
            return refuse("round trip and jitter are at most a minute");
        }
        if !(0.0..=1.0).contains(&self.loss) {
            return refuse("loss is a probability, 0 to 1");
        }
        if self.up_bytes_per_s == Some(0) || self.down_bytes_per_s == Some(0) {
            return refuse("a bandwidth cap is at least one byte a second");
        }
        if self.cut_mean.is_some_and(|mean| mean.is_zero() || mean > CUT_MEAN_MAX) {
            return refuse("a random cut's mean lifetime is above zero and at most a day");
        }
        Ok(self)
    }

    /// How late a lost segment arrives under [`Loss::Retransmit`]: an estimate of TCP's
    /// retransmission timeout (RFC 6298: the round trip plus four times its variation),
    /// never below Linux's minimum.
    pub fn retransmit_timeout(&self) -> Duration {
        (self.rtt + self.jitter * 4).clamp(RETRANSMIT_TIMEOUT_MIN, DELAY_MAX)
    }
}

impl FromStr for Profile {
    type Err = ProfileError;

    fn from_str(name: &str) -> Result<Profile, ProfileError> {
        Profile::named(name)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = |cap: Option<u64>| cap.map_or("uncapped".to_owned(), |b| format!("{b} B/s"));
        write!(
            f,
            "{}: rtt {:?} jitter {:?} loss {} ({:?}) up {} down {}",
            self.name,
            self.rtt,
            self.jitter,
            self.loss,
            self.loss_kind,
            rate(self.up_bytes_per_s),
            rate(self.down_bytes_per_s)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_profile_is_valid_and_slower_ones_are_slower() {
        let profiles: Vec<Profile> =
            PROFILE_NAMES.iter().map(|name| Profile::named(name).expect("valid")).collect();
        for pair in profiles.windows(2) {
            assert!(pair[0].rtt <= pair[1].rtt, "{} then {}", pair[0], pair[1]);
        }
        assert!(matches!(Profile::named("5g"), Err(ProfileError::Unknown(_))));
        let bad = Profile { loss: 1.5, ..Profile::none() };
        assert!(bad.validated().is_err());
    }
}
