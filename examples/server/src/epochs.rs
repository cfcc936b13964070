//! Replies of `BATCH.RUN` and `BATCH.STATUS`: the batch service's epoch reports as RESP
//! maps (flat arrays in RESP2), with business days as `YYYY-MM-DD` and times in
//! microseconds.

use plafond::{EpochReport, RegionEpochs, Regions};

use crate::stats::civil_date;
use plafond_wire::Encoder;

/// `BATCH.RUN`: `{region, day, accounts, duration_us, max_pause_us}`.
pub fn render_report(encoder: &mut Encoder<'_>, regions: &Regions, report: &EpochReport) {
    let name = regions.get(report.region).map_or("?", |r| r.name.as_str());
    encoder.map(5);
    encoder.bulk(b"region");
    encoder.bulk(name.as_bytes());
    encoder.bulk(b"day");
    encoder.bulk(civil_date(report.day).as_bytes());
    encoder.bulk(b"accounts");
    encoder.integer(i128::from(report.accounts));
    encoder.bulk(b"duration_us");
    encoder.integer(report.duration.as_micros() as i128);
    encoder.bulk(b"max_pause_us");
    encoder.integer(report.max_pause.as_micros() as i128);
}

/// `BATCH.STATUS`: per region `{region, last_day, duration_us, max_pause_us}`; the day is
/// nil before the first epoch, the times nil until this process has run one.
pub fn render_status(encoder: &mut Encoder<'_>, status: &[(String, RegionEpochs)]) {
    encoder.array(status.len());
    for (name, epochs) in status {
        encoder.map(4);
        encoder.bulk(b"region");
        encoder.bulk(name.as_bytes());
        encoder.bulk(b"last_day");
        match epochs.last_day {
            Some(day) => encoder.bulk(civil_date(day).as_bytes()),
            None => encoder.nil(),
        }
        let report = epochs.last_report.as_ref();
        encoder.bulk(b"duration_us");
        match report {
            Some(report) => encoder.integer(report.duration.as_micros() as i128),
            None => encoder.nil(),
        }
        encoder.bulk(b"max_pause_us");
        match report {
            Some(report) => encoder.integer(report.max_pause.as_micros() as i128),
            None => encoder.nil(),
        }
    }
}
