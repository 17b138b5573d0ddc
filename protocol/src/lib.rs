//! Wellspring's shared language: the typed keys of the imaging hierarchy, the records
//! that flow through a DAG and their schemas, the DAG spec, and the wire formats.
//!
//! Nothing here runs: no actors, no I/O. Start with [`records::ChannelImage`] (the message
//! that starts it all), [`records::ExperimentLayout`] (what makes each level complete) and
//! [`spec::Dag::load`] (a DAG spec, parsed and validated); [`duration`] is how every
//! duration is read, and [`taskstore::api`] is the node's HTTP API (with [`status`],
//! [`rerun`], [`redrive`] and [`ingest_api`] for the DAGs' calls). Every other crate
//! depends on this one; a change to a record's shape or to the spec language belongs here.

pub mod duration;
pub mod envelope;
pub mod ingest_api;
pub mod keys;
pub mod records;
pub mod redrive;
pub mod rerun;
pub mod schema;
pub mod spec;
pub mod status;
pub mod synthetic;
pub mod task;
pub mod taskstore;
pub mod value;
pub mod wire;

pub use envelope::{Envelope, MessageId, TraceContext};
pub use keys::{ChannelKey, ExperimentId, KeyError, PlateKey, SiteKey, WellId, WellKey};
pub use records::{
    ChannelImage, DeadLetter, ExperimentLayout, ExperimentRecord, IncompleteRecord, Origin,
    PlateRecord, SiteRecord, WellRecord,
};
pub use schema::{Schema, SchemaSet, ValidationErrors};
pub use spec::{Dag, SpecErrors, SpecFormat};
pub use task::{TaskOutcome, TaskRequest, TaskResult};
pub use value::Value;
