//! Value objects: built by `parse`, so a command can only carry valid values. Each parse error is
//! a short message for the field it concerns; the API gathers them into one 422.

use std::collections::BTreeMap;

/// Field name -> what is wrong with it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldErrors(pub BTreeMap<String, String>);

impl FieldErrors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the error of a parse, returning its value when it succeeded.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.0.insert(field.to_string(), message);
                None
            }
        }
    }

    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.insert(field.to_string(), message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn has_control(value: &str) -> bool {
    value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
}

/// Trimmed single-line or multi-line text of bounded length.
fn bounded(value: &str, min: usize, max: usize, multiline: bool) -> Result<String, String> {
    let trimmed = value.trim();
    let len = trimmed.chars().count();
    if len < min {
        return Err(if min == 1 {
            "must not be empty".to_string()
        } else {
            format!("must be at least {min} characters")
        });
    }
    if len > max {
        return Err(format!("must be at most {max} characters"));
    }
    if has_control(trimmed) || (!multiline && trimmed.contains(['\n', '\t'])) {
        return Err("must not contain control characters".to_string());
    }
    Ok(trimmed.to_string())
}

/// Optional text: blank means absent.
pub fn optional_text(value: Option<&str>, max: usize) -> Result<Option<String>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => bounded(text, 1, max, true).map(Some),
    }
}

/// A normalised (trimmed, lower-case) e-mail address that the mailer can send to: parsed by
/// `lettre::Address`, the type the SMTP transport itself takes, plus our own rules (a dotted
/// domain, no domain literal, at most 254 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(value: &str) -> Result<Email, String> {
        let email = value.trim().to_lowercase();
        let invalid = || "must be a valid e-mail address".to_string();
        if email.len() > 254 {
            return Err(invalid());
        }
        let address: lettre::Address = email.parse().map_err(|_| invalid())?;
        let domain = address.domain();
        if address.user().len() > 64
            || domain.starts_with('[')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return Err(invalid());
        }
        Ok(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that meets the policy (ASVS 2.1.1, 2.1.7): 12 to 128 characters, and not easy to
/// guess by zxcvbn's estimate (score 3 of 4 at least, with its dictionaries of common passwords,
/// names and words, and the account's own e-mail and name). No composition rules (ASVS 2.1.9).
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    pub const MIN: usize = 12;
    pub const MAX: usize = 128;
    /// The lowest zxcvbn score accepted ("safely unguessable": about 10^10 guesses).
    pub const MIN_SCORE: u8 = 3;

    /// `context`: what the password must not lean on (the account's e-mail, its name).
    pub fn parse(value: &str, context: &[&str]) -> Result<Password, String> {
        let len = value.chars().count();
        if len < Self::MIN {
            return Err(format!("must be at least {} characters", Self::MIN));
        }
        if len > Self::MAX {
            return Err(format!("must be at most {} characters", Self::MAX));
        }
        let mut inputs: Vec<&str> = Vec::with_capacity(context.len() * 2);
        for item in context {
            inputs.push(item);
            // The parts of an address or a name are guessable on their own.
            if let Some((local, _)) = item.split_once('@') {
                inputs.push(local);
            }
            inputs.extend(item.split(['@', '.', ' ']).filter(|p| p.len() >= 3));
        }
        let estimate = zxcvbn::zxcvbn(value, &inputs);
        if u8::from(estimate.score()) < Self::MIN_SCORE {
            let mut reason = "is too easy to guess".to_string();
            if let Some(feedback) = estimate.feedback() {
                if let Some(warning) = feedback.warning() {
                    reason.push_str(&format!(": {warning}"));
                }
                let tips: Vec<String> = feedback
                    .suggestions()
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                if !tips.is_empty() {
                    reason.push_str(&format!(" ({})", tips.join(" ")));
                }
            }
            return Err(reason);
        }
        Ok(Password(value.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A user's public name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

/// Characters that change how text around them is shown without showing themselves: bidirectional
/// controls (a name that reads backwards), zero-width and joiner characters, invisible separators,
/// tags. One stranger could use them to pass for another.
fn is_invisible_formatting(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{E0000}'..='\u{E007F}'
        | '\u{E0100}'..='\u{E01EF}')
}

impl DisplayName {
    /// 1 to 80 characters on one line, without control or invisible formatting characters.
    pub fn parse(value: &str) -> Result<DisplayName, String> {
        let name = bounded(value, 1, 80, false)?;
        if name.chars().any(is_invisible_formatting) {
            return Err("must not contain invisible or text-direction characters".to_string());
        }
        Ok(DisplayName(name))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A plant's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlantName(String);

impl PlantName {
    pub fn parse(value: &str) -> Result<PlantName, String> {
        bounded(value, 1, 100, false).map(PlantName)
    }
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Days between waterings.
pub fn watering_interval(days: i64) -> Result<i32, String> {
    if (1..=365).contains(&days) {
        Ok(days as i32)
    } else {
        Err("must be between 1 and 365 days".to_string())
    }
}

/// Bounded free text of several lines (instructions, messages, notes, comments).
pub fn text(value: &str, min: usize, max: usize) -> Result<String, String> {
    bounded(value, min, max, true)
}

/// The days of a sitting: from `starts_on` to `ends_on` included, starting today at the
/// earliest, at most `max_days` long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SittingPeriod {
    starts_on: chrono::NaiveDate,
    ends_on: chrono::NaiveDate,
}

impl SittingPeriod {
    /// `today` is the caller's clock (UTC), passed in so the rule is testable.
    pub fn parse(
        starts_on: chrono::NaiveDate,
        ends_on: chrono::NaiveDate,
        today: chrono::NaiveDate,
        max_days: i64,
    ) -> Result<SittingPeriod, (&'static str, String)> {
        if starts_on < today {
            return Err(("starts_on", "must be today or later".into()));
        }
        if ends_on < starts_on {
            return Err(("ends_on", "must be on or after starts_on".into()));
        }
        let days = (ends_on - starts_on).num_days() + 1;
        if days > max_days {
            return Err((
                "ends_on",
                format!("a sitting lasts at most {max_days} days"),
            ));
        }
        Ok(SittingPeriod { starts_on, ends_on })
    }

    pub fn starts_on(&self) -> chrono::NaiveDate {
        self.starts_on
    }

    pub fn ends_on(&self) -> chrono::NaiveDate {
        self.ends_on
    }
}

/// A point on Earth in degrees (WGS 84).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

impl GeoPoint {
    pub fn parse(lat: f64, lon: f64) -> Result<GeoPoint, (&'static str, String)> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(("lat", "must be a latitude from -90 to 90".into()));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(("lon", "must be a longitude from -180 to 180".into()));
        }
        Ok(GeoPoint { lat, lon })
    }

    /// About 1 km: what strangers see of where a sitting is. Rounded to a grid of 0.01 degree of
    /// latitude (1.1 km) and the longitude step that spans as much at this latitude, so a
    /// stranger cannot tell places within one cell apart.
    pub fn approximate(&self) -> GeoPoint {
        let lat_step = 0.01;
        let lat = (self.lat / lat_step).round() * lat_step;
        let cos = lat.to_radians().cos().abs().max(0.01);
        let lon_step = (lat_step / cos).min(1.0);
        let lon = ((self.lon / lon_step).round() * lon_step).clamp(-180.0, 180.0);
        GeoPoint {
            lat: (lat * 1e6).round() / 1e6,
            lon: (lon * 1e6).round() / 1e6,
        }
    }
}

/// A review's rating: 1 to 5 stars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rating(u8);

impl Rating {
    pub fn parse(value: i64) -> Result<Rating, String> {
        if (1..=5).contains(&value) {
            Ok(Rating(value as u8))
        } else {
            Err("must be an integer from 1 to 5".into())
        }
    }

    pub fn value(&self) -> u8 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalised_and_checked() {
        assert_eq!(
            Email::parse("  Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@example.com",
            "a@@b.com",
            "a@b..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        // What the SMTP library refuses is refused here too.
        for bad in [
            "a,b@example.org",
            "a b@example.org",
            "<a>@example.org",
            "a@[127.0.0.1]",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_policy() {
        assert!(Password::parse("short", &[]).is_err());
        assert!(Password::parse("aaaaaaaaaaaa", &[]).is_err());
        assert!(Password::parse(&"x1".repeat(65), &[]).is_err());
        let weak = Password::parse("password1234", &[]).unwrap_err();
        assert!(weak.starts_with("is too easy to guess"), "{weak}");
        assert!(
            weak.len() > "is too easy to guess".len(),
            "with the reason: {weak}"
        );
        assert!(Password::parse("correct horse battery", &[]).is_ok());
        // What the account itself says is guessable.
        assert!(Password::parse("gwendolyn.marchetti", &[]).is_ok());
        assert!(
            Password::parse("gwendolyn.marchetti", &["gwendolyn.marchetti@example.com"]).is_err()
        );
        assert_eq!(
            format!(
                "{:?}",
                Password::parse("correct horse battery", &[]).unwrap()
            ),
            "Password(***)"
        );
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(DisplayName::parse("  Ana ").unwrap().as_str(), "Ana");
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse("a\nb").is_err());
        // "Ana" followed by a right-to-left override, a zero-width space, a BOM, a tag.
        for sneaky in [
            "Ana\u{202E}moc",
            "A\u{200B}na",
            "\u{FEFF}Ana",
            "Ana\u{E0041}",
            "An\u{2066}a",
        ] {
            assert!(DisplayName::parse(sneaky).is_err(), "{sneaky:?}");
        }
        assert_eq!(
            DisplayName::parse("Zoë Ñúñez").unwrap().as_str(),
            "Zoë Ñúñez"
        );
        assert_eq!(DisplayName::parse("علي").unwrap().as_str(), "علي");
        assert!(PlantName::parse(&"m".repeat(101)).is_err());
        assert_eq!(optional_text(Some("  "), 10).unwrap(), None);
        assert!(optional_text(Some(&"x".repeat(11)), 10).is_err());
        assert!(watering_interval(0).is_err());
        assert_eq!(watering_interval(7).unwrap(), 7);
    }
}
