//! The Raft-replicated coordinator (issue 6): raft loop, state machine, scheduler. Not yet built.
