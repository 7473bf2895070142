//! Coarse demographics a result may carry (issue #16): an age band and sex, so a
//! ministry can disaggregate its reports. Only these coarse forms ever leave the clinic,
//! and only when the clinic recorded the patient's age or sex (`vitals.json`): an exact
//! age, a birth date or a name never does. Five bands are coarse enough that, with the
//! hub's small-cell suppression, a band does not point at a person.

use serde::{Deserialize, Serialize};

use pleura_proto::v1 as pb;

/// An age band in whole years.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AgeBand {
    Under5,
    From5To14,
    From15To49,
    From50To64,
    From65,
}

impl AgeBand {
    pub const ALL: [AgeBand; 5] = [
        AgeBand::Under5,
        AgeBand::From5To14,
        AgeBand::From15To49,
        AgeBand::From50To64,
        AgeBand::From65,
    ];

    /// The band of an age in years; `None` for a value no person has (negative, NaN,
    /// over 130).
    pub fn of_years(age: f32) -> Option<Self> {
        if !(0.0..=130.0).contains(&age) {
            return None;
        }
        Some(match age as u32 {
            0..=4 => AgeBand::Under5,
            5..=14 => AgeBand::From5To14,
            15..=49 => AgeBand::From15To49,
            50..=64 => AgeBand::From50To64,
            _ => AgeBand::From65,
        })
    }

    /// "0-4", "5-14", "15-49", "50-64", "65+".
    pub fn label(self) -> &'static str {
        match self {
            AgeBand::Under5 => "0-4",
            AgeBand::From5To14 => "5-14",
            AgeBand::From15To49 => "15-49",
            AgeBand::From50To64 => "50-64",
            AgeBand::From65 => "65+",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Sex {
    Female,
    Male,
}

impl Sex {
    pub const ALL: [Sex; 2] = [Sex::Female, Sex::Male];

    pub fn label(self) -> &'static str {
        match self {
            Sex::Female => "female",
            Sex::Male => "male",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a result says of its patient, each part only if the clinic recorded it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Demographics {
    pub age_band: Option<AgeBand>,
    pub sex: Option<Sex>,
}

impl Demographics {
    pub fn age_to_wire(&self) -> i32 {
        (match self.age_band {
            None => pb::AgeBand::Unspecified,
            Some(AgeBand::Under5) => pb::AgeBand::AgeBand04,
            Some(AgeBand::From5To14) => pb::AgeBand::AgeBand514,
            Some(AgeBand::From15To49) => pb::AgeBand::AgeBand1549,
            Some(AgeBand::From50To64) => pb::AgeBand::AgeBand5064,
            Some(AgeBand::From65) => pb::AgeBand::AgeBand65Plus,
        }) as i32
    }

    pub fn sex_to_wire(&self) -> i32 {
        (match self.sex {
            None => pb::Sex::Unspecified,
            Some(Sex::Female) => pb::Sex::Female,
            Some(Sex::Male) => pb::Sex::Male,
        }) as i32
    }

    /// From the wire's two enums; an unknown value is an error naming the field.
    pub fn from_wire(age_band: i32, sex: i32) -> Result<Self, (&'static str, String)> {
        let age_band = match pb::AgeBand::try_from(age_band) {
            Ok(pb::AgeBand::Unspecified) => None,
            Ok(pb::AgeBand::AgeBand04) => Some(AgeBand::Under5),
            Ok(pb::AgeBand::AgeBand514) => Some(AgeBand::From5To14),
            Ok(pb::AgeBand::AgeBand1549) => Some(AgeBand::From15To49),
            Ok(pb::AgeBand::AgeBand5064) => Some(AgeBand::From50To64),
            Ok(pb::AgeBand::AgeBand65Plus) => Some(AgeBand::From65),
            Err(_) => return Err(("age_band", format!("unknown age band {age_band}"))),
        };
        let sex = match pb::Sex::try_from(sex) {
            Ok(pb::Sex::Unspecified) => None,
            Ok(pb::Sex::Female) => Some(Sex::Female),
            Ok(pb::Sex::Male) => Some(Sex::Male),
            Err(_) => return Err(("sex", format!("unknown sex {sex}"))),
        };
        Ok(Self { age_band, sex })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_fall_in_five_bands_and_impossible_ones_in_none() {
        let bands: Vec<_> = [0.0, 4.9, 5.0, 14.99, 15.0, 49.5, 50.0, 64.9, 65.0, 101.0]
            .iter()
            .map(|a| AgeBand::of_years(*a).unwrap().label())
            .collect();
        assert_eq!(
            bands,
            ["0-4", "0-4", "5-14", "5-14", "15-49", "15-49", "50-64", "50-64", "65+", "65+"]
        );
        for bad in [-1.0, f32::NAN, 131.0, f32::INFINITY] {
            assert_eq!(AgeBand::of_years(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_value_round_trips_and_unknown_ones_are_named() {
        for age_band in AgeBand::ALL.map(Some).into_iter().chain([None]) {
            for sex in Sex::ALL.map(Some).into_iter().chain([None]) {
                let d = Demographics { age_band, sex };
                assert_eq!(
                    Demographics::from_wire(d.age_to_wire(), d.sex_to_wire()),
                    Ok(d)
                );
            }
        }
        assert_eq!(Demographics::from_wire(9, 0).unwrap_err().0, "age_band");
        assert_eq!(Demographics::from_wire(0, 3).unwrap_err().0, "sex");
    }
}
