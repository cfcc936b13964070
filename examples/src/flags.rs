//! A small command-line flag reader shared by the example programs: `--name value`,
//! `--name=value`, switches (`--name`, no value), and positional words. Errors say which
//! flag was wrong and how.

use std::collections::BTreeMap;
use std::str::FromStr;

/// Parsed command-line arguments.
#[derive(Debug, Default)]
pub struct Flags {
    values: BTreeMap<String, String>,
    switches: Vec<String>,
    /// Words that are not flags, in order (a command for the cli).
    pub positional: Vec<String>,
    /// Whether `--help` or `-h` was given.
    pub help: bool,
}

impl Flags {
    /// Reads `args` (without the program name). Every flag in `known` takes a value;
    /// anything else starting with `--` is refused. After `--`, everything is positional.
    pub fn parse(args: impl IntoIterator<Item = String>, known: &[&str]) -> Result<Flags, String> {
        Flags::parse_with_switches(args, known, &[])
    }

    /// [`Flags::parse`], also taking the `switches`: flags without a value.
    pub fn parse_with_switches(
        args: impl IntoIterator<Item = String>,
        known: &[&str],
        switches: &[&str],
    ) -> Result<Flags, String> {
        let mut flags = Flags::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                flags.help = true;
                continue;
            }
            if arg == "--" {
                flags.positional.extend(args.by_ref());
                break;
            }
            let Some(flag) = arg.strip_prefix("--") else {
                flags.positional.push(arg);
                continue;
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (flag.to_string(), None),
            };
            if switches.contains(&name.as_str()) {
                if value.is_some() {
                    return Err(format!("flag --{name} takes no value"));
                }
                flags.switches.push(name);
                continue;
            }
            if !known.contains(&name.as_str()) {
                return Err(format!("unknown flag --{name} (see --help)"));
            }
            let value = match value {
                Some(value) => value,
                None => args.next().ok_or_else(|| format!("flag --{name} needs a value"))?,
            };
            flags.values.insert(name, value);
        }
        Ok(flags)
    }

    /// Whether the switch `--name` was given.
    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|given| given == name)
    }

    /// The raw value of `--name`, if given.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of `--name` parsed as `T`, or `default`.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(name) {
            None => Ok(default),
            Some(text) => {
                let plain = text.replace('_', "");
                plain.parse().map_err(|e| format!("--{name} {text}: {e}"))
            }
        }
    }

    /// The value of `--name` parsed as `T`, if given.
    pub fn optional<T: FromStr>(&self, name: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(name) {
            None => Ok(None),
            Some(text) => {
                text.replace('_', "").parse().map(Some).map_err(|e| format!("--{name} {text}: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn reads_flags_and_words() {
        let flags = Flags::parse(
            strings(&["--port", "7380", "--token=abc", "pay", "0", "100"]),
            &["port", "token"],
        )
        .expect("valid");
        assert_eq!(flags.get("port", 7379u16), Ok(7380));
        assert_eq!(flags.text("token"), Some("abc"));
        assert_eq!(flags.positional, strings(&["pay", "0", "100"]));
        assert_eq!(flags.get("cards", 100_000u64), Ok(100_000));
    }

    #[test]
    fn switches_take_no_value() {
        let flags =
            Flags::parse_with_switches(strings(&["--open", "--port", "1"]), &["port"], &["open"])
                .expect("valid");
        assert!(flags.switch("open"));
        assert!(!flags.switch("closed"));
        assert_eq!(flags.get("port", 0u16), Ok(1));
        assert!(Flags::parse_with_switches(strings(&["--open=1"]), &[], &["open"]).is_err());
        assert!(Flags::parse(strings(&["--open"]), &["port"]).is_err(), "not a switch here");
    }

    #[test]
    fn refuses_unknown_and_incomplete_flags() {
        assert!(Flags::parse(strings(&["--nope", "1"]), &["port"]).is_err());
        assert!(Flags::parse(strings(&["--port"]), &["port"]).is_err());
        let flags = Flags::parse(strings(&["--port", "x"]), &["port"]).expect("parses");
        assert!(flags.get("port", 1u16).is_err());
    }
}
