//! Regions: a time zone, a roll time and the rules for new accounts.
//!
//! Regions come from a TOML file (see [`Regions::from_toml`]) or the built-in pair
//! [`Regions::builtin`]. A region whose roll time falls in a daylight-saving gap or
//! overlap of its zone in the next ten years is refused: its business day would start
//! twice or never.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::command::RegionId;
use crate::idempotency::{RETENTION_DAYS_DEFAULT, RETENTION_DAYS_MAX, RETENTION_DAYS_MIN};
use crate::money;

pub use crate::limits::REGIONS_MAX;
use crate::limits::{
    HOLD_EXPIRY_DAYS_DEFAULT, HOLD_EXPIRY_DAYS_MAX, HOLD_EXPIRY_DAYS_MIN, SAVINGS_RATE_BP_MAX,
};
/// How far ahead a roll time is checked against daylight-saving transitions.
pub const DST_CHECK_DAYS: i32 = 3653;

/// Why a region table was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The file does not parse, or has unknown or missing fields (the parser's message).
    #[error("regions config is not valid TOML: {0}")]
    Toml(String),
    /// The time zone database has no zone of that name.
    #[error("region `{region}`: unknown time zone `{zone}` (use an IANA name like Europe/Paris)")]
    UnknownZone {
        /// The region's name.
        region: String,
        /// The zone name given.
        zone: String,
    },
    /// The roll time is not a valid `HH:MM`.
    #[error("region `{region}`: roll time `{time}` is not HH:MM")]
    BadRollTime {
        /// The region's name.
        region: String,
        /// The roll time given.
        time: String,
    },
    /// On some date the roll time does not exist or exists twice in the zone.
    #[error(
        "region `{region}`: roll time {time} falls in a daylight-saving {kind} of {zone} on \
         {date}; pick a time of day that exists exactly once every day"
    )]
    RollTimeInTransition {
        /// The region's name.
        region: String,
        /// The roll time, as `HH:MM`.
        time: String,
        /// The zone's name.
        zone: String,
        /// The first local date on which it happens.
        date: Date,
        /// `"gap"` (the time never happens) or `"overlap"` (it happens twice).
        kind: &'static str,
    },
    /// `initial_deposit` or `default_card_ceiling` is outside `1 ..= 10^15`.
    #[error("region `{region}`: {what} must be 1 ..= 10^15 minor units")]
    BadAmount {
        /// The region's name.
        region: String,
        /// The field's name.
        what: &'static str,
    },
    /// `savings_rate_bp` is above 100 000 (1000 %).
    #[error("region `{region}`: savings_rate_bp must be 0 ..= 100000")]
    BadRate {
        /// The region's name.
        region: String,
    },
    /// `idempotency_retention_days` is outside `1 ..= 400`.
    #[error(
        "region `{region}`: idempotency_retention_days must be {RETENTION_DAYS_MIN} ..= \
         {RETENTION_DAYS_MAX} business days, not {days}"
    )]
    BadRetention {
        /// The region's name.
        region: String,
        /// The number given.
        days: u16,
    },
    /// `hold_expiry_days` is outside `1 ..= 45`.
    #[error(
        "region `{region}`: hold_expiry_days must be {HOLD_EXPIRY_DAYS_MIN} ..= \
         {HOLD_EXPIRY_DAYS_MAX} business days, not {days}"
    )]
    BadHoldExpiry {
        /// The region's name.
        region: String,
        /// The number given.
        days: u16,
    },
    /// The table as a whole is wrong: no regions, too many, or a name twice.
    #[error("regions config: {0}")]
    Table(String),
}

/// The rules of a region. They are part of each shard's state, changed by a logged
/// input when the configuration changes, so that replaying the log applies each rule
/// from the point it took effect.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Rules {
    /// Credited when an account is opened.
    pub initial_deposit_minor: u64,
    /// The seven-day ceiling of cards without one of their own.
    pub default_card_ceiling_minor: u64,
    /// Annual savings rate, in basis points.
    pub savings_rate_bp: u32,
}

/// A region.
#[derive(Clone, Debug)]
pub struct Region {
    /// Its name, such as `eu-west`: how clients and operators refer to it.
    pub name: String,
    /// The IANA name of its time zone, such as `Europe/Paris`.
    pub zone_name: String,
    /// Its time zone, which decides when its business days start.
    pub zone: TimeZone,
    /// Local time of day at which the business day changes.
    pub roll_time: Time,
    /// The rules its accounts follow, as configured.
    pub rules: Rules,
    /// Business days a command id is remembered after its command (§6), `1 ..= 400`.
    /// Not one of the logged [`Rules`]: only lookups use it, and replay never looks up.
    pub idempotency_retention_days: u16,
    /// Business days an open hold lives (§12), `1 ..= 45`, default 7: a hold placed on
    /// day D expires at the roll of day `D + hold_expiry_days`. Logged into each shard's
    /// state when it changes (`Input::SetHoldExpiry`), as it decides outcomes.
    pub hold_expiry_days: u16,
}

/// The engine's regions, indexed by [`RegionId`].
#[derive(Clone, Debug)]
pub struct Regions {
    regions: Vec<Region>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionsFile {
    region: Vec<RegionEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionEntry {
    name: String,
    time_zone: String,
    roll_time: String,
    initial_deposit: u64,
    default_card_ceiling: u64,
    savings_rate_bp: u32,
    #[serde(default = "default_retention_days")]
    idempotency_retention_days: u16,
    #[serde(default = "default_hold_expiry_days")]
    hold_expiry_days: u16,
}

fn default_hold_expiry_days() -> u16 {
    HOLD_EXPIRY_DAYS_DEFAULT
}

fn default_retention_days() -> u16 {
    RETENTION_DAYS_DEFAULT
}

impl Regions {
    /// `eu-west` (Europe/Paris) and `us-east` (America/New_York), rolling at 04:00.
    pub fn builtin() -> Regions {
        let text = r#"
            [[region]]
            name = "eu-west"
            time_zone = "Europe/Paris"
            roll_time = "04:00"
            initial_deposit = 100000
            default_card_ceiling = 300000
            savings_rate_bp = 300

            [[region]]
            name = "us-east"
            time_zone = "America/New_York"
            roll_time = "04:00"
            initial_deposit = 100000
            default_card_ceiling = 300000
            savings_rate_bp = 300
        "#;
        match Regions::from_toml(text) {
            Ok(regions) => regions,
            Err(error) => unreachable!("built-in regions are valid: {error}"),
        }
    }

    /// Parses a regions file: a list of `[[region]]` tables with `name`, `time_zone`,
    /// `roll_time` (`HH:MM`), `initial_deposit`, `default_card_ceiling`, `savings_rate_bp`
    /// and, optionally, `idempotency_retention_days` (default 30) and `hold_expiry_days`
    /// (default 7).
    pub fn from_toml(text: &str) -> Result<Regions, RegionError> {
        let file: RegionsFile =
            toml::from_str(text).map_err(|e| RegionError::Toml(e.to_string()))?;
        if file.region.is_empty() || file.region.len() > REGIONS_MAX {
            return Err(RegionError::Table(format!("1 to {REGIONS_MAX} regions are needed")));
        }
        let mut regions = Vec::with_capacity(file.region.len());
        for entry in file.region {
            if regions.iter().any(|r: &Region| r.name == entry.name) {
                return Err(RegionError::Table(format!("region `{}` appears twice", entry.name)));
            }
            regions.push(Region::from_entry(entry)?);
        }
        Ok(Regions { regions })
    }

    /// Refuses a roll time that falls in a daylight-saving gap or overlap on any of the
    /// [`DST_CHECK_DAYS`] days from `today`.
    pub fn check_roll_times(&self, today: Date) -> Result<(), RegionError> {
        self.regions.iter().try_for_each(|region| region.check_roll_time(today))
    }

    /// The region with this id.
    pub fn get(&self, id: RegionId) -> Option<&Region> {
        self.regions.get(usize::from(id))
    }

    /// The id of the region called `name`.
    pub fn id_of(&self, name: &str) -> Option<RegionId> {
        self.regions.iter().position(|r| r.name == name).map(|i| i as RegionId)
    }

    /// How many regions there are.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether there are none (never true for a loaded table).
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// All regions, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Region> {
        self.regions.iter()
    }
}

impl Region {
    fn from_entry(entry: RegionEntry) -> Result<Region, RegionError> {
        let name = entry.name;
        let zone = TimeZone::get(&entry.time_zone).map_err(|_| RegionError::UnknownZone {
            region: name.clone(),
            zone: entry.time_zone.clone(),
        })?;
        let roll_time = parse_hh_mm(&entry.roll_time).ok_or_else(|| RegionError::BadRollTime {
            region: name.clone(),
            time: entry.roll_time,
        })?;
        for (what, value) in [
            ("initial_deposit", entry.initial_deposit),
            ("default_card_ceiling", entry.default_card_ceiling),
        ] {
            if !money::amount_is_valid(value) {
                return Err(RegionError::BadAmount { region: name.clone(), what });
            }
        }
        if entry.savings_rate_bp > SAVINGS_RATE_BP_MAX {
            return Err(RegionError::BadRate { region: name });
        }
        let retention_days = entry.idempotency_retention_days;
        if !(RETENTION_DAYS_MIN..=RETENTION_DAYS_MAX).contains(&retention_days) {
            return Err(RegionError::BadRetention { region: name, days: retention_days });
        }
        let hold_expiry_days = entry.hold_expiry_days;
        if !(HOLD_EXPIRY_DAYS_MIN..=HOLD_EXPIRY_DAYS_MAX).contains(&hold_expiry_days) {
            return Err(RegionError::BadHoldExpiry { region: name, days: hold_expiry_days });
        }
        Ok(Region {
            name,
            zone_name: entry.time_zone,
            zone,
            roll_time,
            rules: Rules {
                initial_deposit_minor: entry.initial_deposit,
                default_card_ceiling_minor: entry.default_card_ceiling,
                savings_rate_bp: entry.savings_rate_bp,
            },
            idempotency_retention_days: retention_days,
            hold_expiry_days,
        })
    }

    fn check_roll_time(&self, today: Date) -> Result<(), RegionError> {
        let mut date = today;
        for _ in 0..DST_CHECK_DAYS {
            let ambiguous = self.zone.to_ambiguous_timestamp(date.to_datetime(self.roll_time));
            if ambiguous.is_ambiguous() {
                let kind = match ambiguous.offset() {
                    jiff::tz::AmbiguousOffset::Gap { .. } => "gap",
                    _ => "overlap",
                };
                return Err(RegionError::RollTimeInTransition {
                    region: self.name.clone(),
                    time: self.roll_time.strftime("%H:%M").to_string(),
                    zone: self.zone_name.clone(),
                    date,
                    kind,
                });
            }
            date = match date.tomorrow() {
                Ok(next) => next,
                Err(_) => break,
            };
        }
        Ok(())
    }
}

fn parse_hh_mm(text: &str) -> Option<Time> {
    let (hours, minutes) = text.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    Time::new(hours.parse().ok()?, minutes.parse().ok()?, 0, 0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_region(zone: &str, roll: &str) -> String {
        format!(
            "[[region]]\nname = \"r\"\ntime_zone = \"{zone}\"\nroll_time = \"{roll}\"\n\
             initial_deposit = 1\ndefault_card_ceiling = 1\nsavings_rate_bp = 0\n"
        )
    }

    #[test]
    fn builtin_has_two_zones_and_passes_the_dst_check() {
        let regions = Regions::builtin();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions.id_of("eu-west"), Some(0));
        assert_eq!(regions.id_of("us-east"), Some(1));
        assert_ne!(regions.get(0).map(|r| &r.zone_name), regions.get(1).map(|r| &r.zone_name));
        assert!(regions.check_roll_times(Date::constant(2027, 1, 1)).is_ok());
    }

    #[test]
    fn roll_time_in_a_gap_or_overlap_is_refused() {
        // Paris springs forward 02:00 -> 03:00 and falls back 03:00 -> 02:00.
        let gap = Regions::from_toml(&one_region("Europe/Paris", "02:30")).unwrap();
        let error = gap.check_roll_times(Date::constant(2027, 1, 1)).unwrap_err().to_string();
        assert!(error.contains("gap"), "{error}");
        // New York falls back 02:00 -> 01:00, so 01:30 happens twice.
        let fold = Regions::from_toml(&one_region("America/New_York", "01:30")).unwrap();
        let error = fold.check_roll_times(Date::constant(2027, 1, 1)).unwrap_err().to_string();
        assert!(error.contains("overlap"), "{error}");
        let fine = Regions::from_toml(&one_region("Asia/Tokyo", "02:30")).unwrap();
        assert!(fine.check_roll_times(Date::constant(2027, 1, 1)).is_ok());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(matches!(Regions::from_toml("nonsense ="), Err(RegionError::Toml(_))));
        let zone = Regions::from_toml(&one_region("Mars/Olympus", "04:00")).unwrap_err();
        assert!(zone.to_string().contains("Mars/Olympus"));
        let time = Regions::from_toml(&one_region("Europe/Paris", "4h")).unwrap_err();
        assert!(matches!(time, RegionError::BadRollTime { .. }));
        let zero = one_region("Europe/Paris", "04:00")
            .replace("initial_deposit = 1", "initial_deposit = 0");
        assert!(matches!(Regions::from_toml(&zero), Err(RegionError::BadAmount { .. })));
    }

    #[test]
    fn hold_expiry_days_default_to_seven_and_are_bounded() {
        let regions = Regions::from_toml(&one_region("Europe/Paris", "04:00")).unwrap();
        assert_eq!(regions.get(0).map(|r| r.hold_expiry_days), Some(HOLD_EXPIRY_DAYS_DEFAULT));
        let ten = format!("{}hold_expiry_days = 10\n", one_region("Europe/Paris", "04:00"));
        assert_eq!(Regions::from_toml(&ten).unwrap().get(0).unwrap().hold_expiry_days, 10);
        for days in [0, HOLD_EXPIRY_DAYS_MAX + 1] {
            let bad = format!("{}hold_expiry_days = {days}\n", one_region("Europe/Paris", "04:00"));
            let error = Regions::from_toml(&bad).unwrap_err();
            assert!(matches!(error, RegionError::BadHoldExpiry { .. }), "{error}");
        }
    }
}
