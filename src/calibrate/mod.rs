//! Post-hoc calibration: the cheap fix a posterior has to beat.
//!
//! [`TemperatureScaling`] (Guo et al., ICML 2017) divides the logits by one temperature
//! fitted on validation data, which keeps every prediction's ranking and fixes much of an
//! over- or underconfident model's calibration.

mod temperature;

pub use temperature::TemperatureScaling;
