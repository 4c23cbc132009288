//! Optimizers that learn a posterior over the weights.

mod ivon;

pub use ivon::{
    GroupSettings, HessApprox, Ivon, IvonConfig, NonFinite, ParamGroup, ParamState, Position,
};
