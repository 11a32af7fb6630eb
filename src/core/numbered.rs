//! [`Numbered`]: a queue of items with their sequence numbers.
//!
//! Items in memory arrive with consecutive numbers almost always (one
//! send after another), so the numbers are kept as runs of consecutive
//! values next to the items, not one per item: pushing and popping cost
//! an addition, and a queue of a million items in one run keeps one pair.

use std::collections::VecDeque;

/// Items, oldest first, each with its sequence number.
#[derive(Debug)]
pub(crate) struct Numbered<T> {
    /// The items.
    items: VecDeque<T>,
    /// The items' numbers as runs `(first, count)` of consecutive values,
    /// in the items' order; the counts add up to `items.len()`.
    runs: VecDeque<(u64, u64)>,
}

impl<T> Default for Numbered<T> {
    fn default() -> Self {
        Numbered { items: VecDeque::new(), runs: VecDeque::new() }
    }
}

impl<T> Numbered<T> {
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds `item`, numbered `seq`, at the back.
    #[inline]
    pub(crate) fn push_back(&mut self, seq: u64, item: T) {
        self.items.push_back(item);
        match self.runs.back_mut() {
            Some((first, count)) if first.checked_add(*count) == Some(seq) => *count += 1,
            _ => self.runs.push_back((seq, 1)),
        }
    }

    /// Adds `item`, numbered `seq`, at the front.
    pub(crate) fn push_front(&mut self, seq: u64, item: T) {
        self.items.push_front(item);
        match self.runs.front_mut() {
            Some((first, count)) if seq.checked_add(1) == Some(*first) => {
                *first = seq;
                *count += 1;
            }
            _ => self.runs.push_front((seq, 1)),
        }
    }

    /// Takes the oldest item and its number.
    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<(u64, T)> {
        let item = self.items.pop_front()?;
        let (first, count) = self.runs.front_mut()?;
        let seq = *first;
        *first += 1;
        *count -= 1;
        if *count == 0 {
            self.runs.pop_front();
        }
        Some((seq, item))
    }

    /// The number of the oldest item.
    pub(crate) fn front_seq(&self) -> Option<u64> {
        self.runs.front().map(|&(first, _)| first)
    }

    /// Every item with its number, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.runs.iter().flat_map(|&(first, count)| first..first + count).zip(self.items.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_their_items_through_pushes_at_both_ends() {
        let mut queue = Numbered::default();
        for seq in [5, 6, 7, 10, 11] {
            queue.push_back(seq, seq * 100);
        }
        assert_eq!(queue.runs.len(), 2, "two runs of consecutive numbers");
        queue.push_front(4, 400);
        queue.push_front(1, 100);
        assert_eq!(queue.front_seq(), Some(1));
        let all: Vec<(u64, u64)> = queue.iter().map(|(seq, &item)| (seq, item)).collect();
        assert_eq!(all, [(1, 100), (4, 400), (5, 500), (6, 600), (7, 700), (10, 1000), (11, 1100)]);
        let mut popped = Vec::new();
        while let Some((seq, item)) = queue.pop_front() {
            assert_eq!(seq * 100, item);
            popped.push(seq);
        }
        assert_eq!(popped, [1, 4, 5, 6, 7, 10, 11]);
        assert!(queue.is_empty() && queue.runs.is_empty());
    }
}
