//! Where an open aggregate keeps its children, by child id.
//!
//! Most levels keep a sorted vector. A site keeps its channels' locations in one compact
//! buffer ([`Locations`]): a lab holds hundreds of thousands of sites open, and their
//! locations differ only at the end (`…/plate-1/H21/site-3/ch1.tiff`, `…/ch2.tiff`), so
//! the common part is kept once. That is most of a site's memory.

/// What [`Children::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// A new child.
    Added,
    /// The same child again (a repeat).
    Same,
    /// A different child under the same id: the first is kept.
    Different,
}

/// The children of one open aggregate, by id.
pub trait Children<C>: Sized {
    /// Room for `n` children.
    fn with_capacity(n: usize) -> Self;
    /// From children sorted by id (a changelog entry).
    fn from_sorted(children: Vec<(u32, C)>) -> Self;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn contains(&self, id: u32) -> bool;
    /// Adds `child` as `id`, unless a child has that id already.
    fn insert(&mut self, id: u32, child: C) -> Insert;
    /// Keeps the children whose id `keep` approves.
    fn retain(&mut self, keep: impl FnMut(u32) -> bool);
    /// The children sorted by id (a changelog entry).
    fn to_sorted(&self) -> Vec<(u32, C)>;
    /// The children sorted by id, taken (an output).
    fn into_sorted(self) -> Vec<(u32, C)> {
        self.to_sorted()
    }
}

impl<C: Clone + PartialEq> Children<C> for Vec<(u32, C)> {
    fn with_capacity(n: usize) -> Self {
        Vec::with_capacity(n)
    }

    fn from_sorted(children: Vec<(u32, C)>) -> Self {
        children
    }

    fn len(&self) -> usize {
        <[(u32, C)]>::len(self)
    }

    fn contains(&self, id: u32) -> bool {
        self.binary_search_by_key(&id, |(i, _)| *i).is_ok()
    }

    fn insert(&mut self, id: u32, child: C) -> Insert {
        match self.binary_search_by_key(&id, |(i, _)| *i) {
            Ok(i) if self[i].1 == child => Insert::Same,
            Ok(_) => Insert::Different,
            Err(i) => {
                Vec::insert(self, i, (id, child));
                Insert::Added
            }
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        Vec::retain(self, |(id, _)| keep(*id));
    }

    fn to_sorted(&self) -> Vec<(u32, C)> {
        self.clone()
    }

    fn into_sorted(self) -> Vec<(u32, C)> {
        self
    }
}

/// Texts by id in one buffer: the part they all begin with once, then each id with the
/// rest of its text, sorted by id. Numbers are LEB128 varints:
///
/// `count, prefix length, prefix, (id, rest length, rest) × count`
///
/// An empty set holds no allocation. The buffer is rebuilt on each change: a site has a
/// handful of channels, and an exact-size buffer is what keeps it small.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locations(Box<[u8]>);

impl Locations {
    /// The prefix, and a reader at the first entry.
    fn head(&self) -> (usize, &[u8], Reader<'_>) {
        let mut reader = Reader(&self.0);
        let count = reader.varint() as usize;
        let prefix_len = reader.varint() as usize;
        let prefix = reader.bytes(prefix_len);
        (count, prefix, reader)
    }

    /// Each `(id, rest, where its entry starts in the buffer)`, in id order.
    fn entries(&self) -> impl Iterator<Item = (u32, &[u8], usize)> + '_ {
        let (count, _, mut reader) = self.head();
        let total = self.0.len();
        (0..count).map(move |_| {
            let at = total - reader.0.len();
            let id = reader.varint() as u32;
            let len = reader.varint() as usize;
            (id, reader.bytes(len), at)
        })
    }

    /// A buffer of `entries` (sorted by id), each text the prefix and its own part.
    fn build<'a>(
        prefix: &[u8],
        entries: impl ExactSizeIterator<Item = (u32, &'a [u8], &'a [u8])>,
    ) -> Self {
        let mut out = Vec::with_capacity(8 + prefix.len() + entries.len() * 10);
        write_varint(&mut out, entries.len() as u64);
        write_varint(&mut out, prefix.len() as u64);
        out.extend_from_slice(prefix);
        for (id, head, tail) in entries {
            write_varint(&mut out, u64::from(id));
            write_varint(&mut out, (head.len() + tail.len()) as u64);
            out.extend_from_slice(head);
            out.extend_from_slice(tail);
        }
        Self(out.into_boxed_slice())
    }

    /// The number of bytes this set holds (besides itself).
    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }
}

impl Children<String> for Locations {
    fn with_capacity(_: usize) -> Self {
        Self::default()
    }

    fn from_sorted(children: Vec<(u32, String)>) -> Self {
        let mut set = Self::default();
        for (id, text) in children {
            set.insert(id, text);
        }
        set
    }

    fn len(&self) -> usize {
        Reader(&self.0).varint() as usize
    }

    fn contains(&self, id: u32) -> bool {
        self.entries().any(|(i, _, _)| i == id)
    }

    fn insert(&mut self, id: u32, child: String) -> Insert {
        let text = child.as_bytes();
        let (count, prefix, _) = self.head();
        // Where the new entry goes: before the first with a greater id.
        let mut before = None;
        for (i, rest, at) in self.entries() {
            if i == id {
                let same = text.len() == prefix.len() + rest.len()
                    && text.starts_with(prefix)
                    && text.ends_with(rest);
                return if same {
                    Insert::Same
                } else {
                    Insert::Different
                };
            }
            if i > id {
                before = Some(at);
                break;
            }
        }
        // The common case, once a site has a channel: the text begins with the prefix, so
        // the entry is spliced in and the count (one byte below 127) goes up.
        if count > 0 && count < 127 && text.starts_with(prefix) {
            // One exact-size allocation, written in order: no temporary entry, no splice.
            let rest = &text[prefix.len()..];
            let (id, len) = (u64::from(id), rest.len() as u64);
            let at = before.unwrap_or(self.0.len());
            let size = self.0.len() + varint_len(id) + varint_len(len) + rest.len();
            let mut bytes = Vec::with_capacity(size);
            bytes.extend_from_slice(&self.0[..at]);
            write_varint(&mut bytes, id);
            write_varint(&mut bytes, len);
            bytes.extend_from_slice(rest);
            bytes.extend_from_slice(&self.0[at..]);
            bytes[0] += 1;
            self.0 = bytes.into_boxed_slice();
            return Insert::Added;
        }
        // The first child (its whole text is the prefix), or a text that shares less of
        // the prefix: the common part shrinks, and every entry keeps what it loses.
        let entries: Vec<(u32, &[u8])> = self.entries().map(|(i, rest, _)| (i, rest)).collect();
        let shared = if entries.is_empty() {
            text.len()
        } else {
            prefix.iter().zip(text).take_while(|(a, b)| a == b).count()
        };
        let (new_prefix, moved) = prefix.split_at(shared.min(prefix.len()));
        let new_prefix = if entries.is_empty() { text } else { new_prefix };
        let at = entries.partition_point(|(i, _)| *i < id);
        let rest_of_new = &text[new_prefix.len()..];
        let merged = entries[..at]
            .iter()
            .map(|(i, rest)| (*i, moved, *rest))
            .chain(std::iter::once((id, rest_of_new, &[][..])))
            .chain(entries[at..].iter().map(|(i, rest)| (*i, moved, *rest)));
        let built = Self::build(new_prefix, Exact(merged, entries.len() + 1));
        *self = built;
        Insert::Added
    }

    fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        let (_, prefix, _) = self.head();
        let kept: Vec<(u32, &[u8])> = self
            .entries()
            .filter(|(id, _, _)| keep(*id))
            .map(|(id, rest, _)| (id, rest))
            .collect();
        let count = kept.len();
        *self = if count == 0 {
            Self::default()
        } else {
            Self::build(
                prefix,
                Exact(
                    kept.into_iter().map(|(id, rest)| (id, rest, &[][..])),
                    count,
                ),
            )
        };
    }

    fn to_sorted(&self) -> Vec<(u32, String)> {
        let (count, prefix, _) = self.head();
        let mut out = Vec::with_capacity(count);
        for (id, rest, _) in self.entries() {
            let mut text = Vec::with_capacity(prefix.len() + rest.len());
            text.extend_from_slice(prefix);
            text.extend_from_slice(rest);
            // The bytes of a text that was whole UTF-8: split and joined again at the same
            // place, they are that text.
            let text = String::from_utf8(text)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            out.push((id, text));
        }
        out
    }
}

/// An iterator whose length is known.
struct Exact<I>(I, usize);

impl<I: Iterator> Iterator for Exact<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        self.0.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.1, Some(self.1))
    }
}

impl<I: Iterator> ExactSizeIterator for Exact<I> {}

fn write_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// How many bytes [`write_varint`] writes for `n`.
fn varint_len(n: u64) -> usize {
    (64 - n.leading_zeros() as usize).div_ceil(7).max(1)
}

/// Reads a buffer [`Locations`] wrote; past its end, reads zeros and nothing.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> u64 {
        let mut n = 0u64;
        let mut shift = 0;
        while let Some((&byte, rest)) = self.0.split_first() {
            self.0 = rest;
            n |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 || shift >= 63 {
                break;
            }
            shift += 7;
        }
        n
    }

    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn loc(channel: u32) -> String {
        format!("s3://wellspring-demo/EXP-7/plate-1/H21/site-3/ch{channel}.tiff")
    }

    #[test]
    fn a_sites_locations_keep_their_common_part_once() {
        let mut set = Locations::default();
        assert_eq!(set.heap_bytes(), 0, "an empty set holds nothing");
        for channel in [4, 2, 6, 1, 5] {
            assert_eq!(set.insert(channel, loc(channel)), Insert::Added);
        }
        assert_eq!(set.len(), 5);
        assert_eq!(
            set.to_sorted(),
            [1, 2, 4, 5, 6].map(|c| (c, loc(c))).to_vec()
        );
        // 48 bytes of prefix, then 5 × (id, length, "N.tiff"), and 2 bytes of counts.
        assert_eq!(set.heap_bytes(), 2 + 48 + 5 * 8);
        assert!(set.contains(4) && !set.contains(3));
    }

    #[test]
    fn a_varints_length_is_what_is_written() {
        for n in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_varint(&mut out, n);
            assert_eq!(varint_len(n), out.len(), "{n}");
        }
    }

    #[test]
    fn a_repeat_is_the_same_and_a_conflict_keeps_the_first() {
        let mut set = Locations::default();
        set.insert(1, loc(1));
        set.insert(2, loc(2));
        assert_eq!(set.insert(2, loc(2)), Insert::Same);
        assert_eq!(set.insert(2, loc(9)), Insert::Different);
        assert_eq!(set.insert(1, "elsewhere".into()), Insert::Different);
        assert_eq!(set.to_sorted(), vec![(1, loc(1)), (2, loc(2))]);
    }

    #[test]
    fn retain_drops_children_and_an_emptied_set_holds_nothing() {
        let mut set = Locations::from_sorted(vec![(1, loc(1)), (3, loc(3)), (9, loc(9))]);
        set.retain(|id| id != 3);
        assert_eq!(set.to_sorted(), vec![(1, loc(1)), (9, loc(9))]);
        set.retain(|_| false);
        assert!(set.is_empty());
        assert_eq!(set.heap_bytes(), 0);
    }

    proptest! {
        /// Whatever the texts and their order, the compact set holds what a sorted
        /// vector holds, and answers every insert the same way.
        #[test]
        fn locations_behave_as_a_sorted_vector(
            inserts in proptest::collection::vec((0u32..300, "[a-c/é]{0,12}"), 0..24),
            dropped in proptest::collection::btree_set(0u32..300, 0..4),
        ) {
            let mut compact = Locations::default();
            let mut plain: Vec<(u32, String)> = Vec::new();
            for (id, text) in inserts {
                prop_assert_eq!(
                    compact.insert(id, text.clone()),
                    Children::insert(&mut plain, id, text)
                );
                prop_assert_eq!(compact.len(), Children::len(&plain));
            }
            prop_assert_eq!(compact.to_sorted(), plain.clone());
            let restored = Locations::from_sorted(plain.clone());
            prop_assert_eq!(restored.to_sorted(), plain.clone());
            compact.retain(|id| !dropped.contains(&id));
            Children::retain(&mut plain, |id| !dropped.contains(&id));
            prop_assert_eq!(compact.to_sorted(), plain.clone());
            for id in 0..300 {
                prop_assert_eq!(compact.contains(id), Children::contains(&plain, id));
            }
        }
    }
}
