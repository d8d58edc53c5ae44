//! One behavioural suite, run against every backend.

use super::{Batch, MemoryStore, SledStore, Store};

fn put_then_get_returns_the_value(store: &dyn Store) {
    store.put(b"user/1", b"alice").unwrap();
    assert_eq!(store.get(b"user/1").unwrap(), Some(b"alice".to_vec()));
}

fn get_of_a_missing_key_is_none(store: &dyn Store) {
    assert_eq!(store.get(b"nothing/here").unwrap(), None);
}

fn put_overwrites(store: &dyn Store) {
    store.put(b"k", b"one").unwrap();
    store.put(b"k", b"two").unwrap();
    assert_eq!(store.get(b"k").unwrap(), Some(b"two".to_vec()));
}

fn delete_removes_and_is_idempotent(store: &dyn Store) {
    store.put(b"k", b"v").unwrap();
    store.delete(b"k").unwrap();
    store.delete(b"k").unwrap();
    assert_eq!(store.get(b"k").unwrap(), None);
}

fn scan_prefix_lists_only_matching_keys_in_order(store: &dyn Store) {
    store.put(b"user/b", b"2").unwrap();
    store.put(b"user/a", b"1").unwrap();
    store.put(b"usera", b"x").unwrap();
    store.put(b"session/a", b"s").unwrap();
    let found = store.scan_prefix(b"user/").unwrap();
    assert_eq!(
        found,
        vec![
            (b"user/a".to_vec(), b"1".to_vec()),
            (b"user/b".to_vec(), b"2".to_vec())
        ]
    );
    assert!(store.scan_prefix(b"none/").unwrap().is_empty());
}

fn batch_applies_puts_and_deletes_together(store: &dyn Store) {
    store.put(b"old", b"x").unwrap();
    store
        .apply(Batch::new().put("a", "1").put("b", "2").delete("old"))
        .unwrap();
    assert_eq!(store.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get(b"b").unwrap(), Some(b"2".to_vec()));
    assert_eq!(store.get(b"old").unwrap(), None);
}

fn later_writes_in_a_batch_win(store: &dyn Store) {
    store
        .apply(Batch::new().put("k", "1").delete("k").put("k", "3"))
        .unwrap();
    assert_eq!(store.get(b"k").unwrap(), Some(b"3".to_vec()));
}

fn flush_keeps_everything_readable(store: &dyn Store) {
    store.put(b"k", b"v").unwrap();
    store.flush().unwrap();
    assert_eq!(store.get(b"k").unwrap(), Some(b"v".to_vec()));
}

macro_rules! behaviour_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            behaviour_suite!(@tests $make;
                put_then_get_returns_the_value,
                get_of_a_missing_key_is_none,
                put_overwrites,
                delete_removes_and_is_idempotent,
                scan_prefix_lists_only_matching_keys_in_order,
                batch_applies_puts_and_deletes_together,
                later_writes_in_a_batch_win,
                flush_keeps_everything_readable,
            );
        }
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let store = $make;
                super::$name(&store);
            }
        )*
    };
}

behaviour_suite!(memory, MemoryStore::new());
behaviour_suite!(sled, SledStore::temporary().unwrap());

#[test]
fn sled_keeps_flushed_writes_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.apply(Batch::new().put("a", "1")).unwrap();
        store.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.get(b"a").unwrap(), Some(b"1".to_vec()));
}
