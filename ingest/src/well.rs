//! Well names as imagers and plate maps write them, normalised to one [`WellId`].
//!
//! `A1`, `a01`, `A01` and `A001` are the same well; rows run A..Z then AA..AF (1536-well
//! plates); Opera/Phenix names wells by row and column numbers (`r02c05` is B05). The
//! commonest cause of silently empty runs is a well spelled two ways, so every name that
//! enters Wellspring from a folder or a CSV goes through here.

use wellspring_protocol::WellId;

/// A well name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a well name (a row A-Z or AA-AF, then a column 1-48: A1, a01, B05, AF48)")]
pub struct WellError(pub String);

/// The well `text` names, in any case and padding: `a1`, `A01`, `A001`, `af48`.
pub fn normalise_well(text: &str) -> Result<WellId, WellError> {
    let bad = || WellError(text.to_owned());
    let trimmed = text.trim();
    let split = trimmed
        .bytes()
        .position(|b| !b.is_ascii_alphabetic())
        .ok_or_else(bad)?;
    let (letters, digits) = trimmed.split_at(split);
    let letters = letters.to_ascii_uppercase();
    let row = match letters.as_bytes() {
        [a] => a - b'A',
        [b'A', b] if (b'A'..=b'F').contains(b) => 26 + (b - b'A'),
        _ => return Err(bad()),
    };
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let column: u8 = digits.parse().map_err(|_| bad())?;
    WellId::new(row, column).ok_or_else(bad)
}

/// The well at 1-based `row` and `column` numbers (Opera/Phenix's `r02c05`: B05).
pub fn well_at(row: u32, column: u32) -> Result<WellId, WellError> {
    let bad = || WellError(format!("r{row:02}c{column:02}"));
    let row = u8::try_from(row)
        .ok()
        .and_then(|r| r.checked_sub(1))
        .ok_or_else(bad)?;
    let column = u8::try_from(column).map_err(|_| bad())?;
    WellId::new(row, column).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row_letters(row: u8) -> String {
        if row < 26 {
            char::from(b'A' + row).to_string()
        } else {
            format!("A{}", char::from(b'A' + row - 26))
        }
    }

    #[test]
    fn spellings_of_one_well_agree() {
        for text in ["A1", "a01", "A01", "a001", " A01 "] {
            assert_eq!(
                normalise_well(text).map(|w| w.to_string()),
                Ok("A01".into())
            );
        }
        assert_eq!(
            normalise_well("af48").map(|w| w.to_string()),
            Ok("AF48".into())
        );
        assert_eq!(
            normalise_well("AA1").map(|w| w.to_string()),
            Ok("AA01".into())
        );
        assert_eq!(well_at(2, 5).map(|w| w.to_string()), Ok("B05".into()));
        assert_eq!(well_at(32, 48).map(|w| w.to_string()), Ok("AF48".into()));
    }

    #[test]
    fn what_is_not_a_well_is_refused() {
        for text in [
            "", "A", "1", "A0", "A49", "AG01", "ZZ01", "A1x", "A0001", "B-2", "é1",
        ] {
            assert!(normalise_well(text).is_err(), "{text:?}");
        }
        assert!(well_at(0, 1).is_err());
        assert!(well_at(33, 1).is_err());
        assert!(well_at(1, 49).is_err());
        assert!(well_at(1, 0).is_err());
    }

    proptest! {
        /// Every spelling (case, zero padding) of every well of a 1536-well plate reads as
        /// the same well, and the canonical name reads back as itself.
        #[test]
        fn every_spelling_normalises_to_the_canonical_name(
            row in 0u8..32,
            column in 1u8..=48,
            lower in any::<bool>(),
            width in 1usize..=3,
        ) {
            let letters = row_letters(row);
            let letters = if lower { letters.to_ascii_lowercase() } else { letters };
            let text = format!("{letters}{column:0width$}");
            let well = normalise_well(&text).unwrap();
            prop_assert_eq!(well.row(), row);
            prop_assert_eq!(well.column(), column);
            let canonical = well.to_string();
            prop_assert_eq!(normalise_well(&canonical).unwrap(), well);
            prop_assert_eq!(well_at(u32::from(row) + 1, u32::from(column)).unwrap(), well);
        }

        /// No input makes it panic, and whatever it accepts prints as a canonical name.
        #[test]
        fn any_text_is_either_a_well_or_an_error(text in "\\PC{0,6}") {
            if let Ok(well) = normalise_well(&text) {
                prop_assert!(WellId::parse(&well.to_string()).is_ok());
            }
        }
    }
}
