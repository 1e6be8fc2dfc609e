//! Tests of `State::apply`.

use super::*;

#[test]
fn empty_state_has_nothing() {
    let state = State::default();
    assert_eq!(state.jobs().count(), 0);
    assert_eq!(state.n_tasks(), 0);
}
