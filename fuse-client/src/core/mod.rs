//! Client core (being written).
