//! Isola guest SDK. Empty for now: the SDK arrives with the messaging work.
