//! SeaORM entities for the Hookline data model.

pub mod attempt_rollup;
pub mod delivery;
pub mod delivery_attempt;
pub mod destination;
pub mod event;
pub mod subscription;

pub mod prelude {
    pub use super::attempt_rollup::Entity as AttemptRollup;
    pub use super::delivery::Entity as Delivery;
    pub use super::delivery_attempt::Entity as DeliveryAttempt;
    pub use super::destination::Entity as Destination;
    pub use super::event::Entity as Event;
    pub use super::subscription::Entity as Subscription;
}
