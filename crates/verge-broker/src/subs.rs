//! The subscription index: a trie of topic levels with plain and shared
//! (`$share/{group}/...`) subscribers at each node.

use std::collections::HashMap;

use verge_mqtt::SubOptions;

/// Key of a subscriber: a session or an in-process subscription.
pub type SubKey = u64;

/// What a subscriber asked for with one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubEntry {
    /// Subscription options.
    pub options: SubOptions,
    /// 5.0 subscription identifier.
    pub id: Option<u32>,
}

/// One subscriber hit by a topic.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    /// Who.
    pub key: SubKey,
    /// With what options.
    pub entry: SubEntry,
    /// Whether through a shared subscription.
    pub shared: bool,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: HashMap<SubKey, SubEntry>,
    shared: HashMap<Box<str>, Group>,
}

#[derive(Debug, Default)]
struct Group {
    members: Vec<(SubKey, SubEntry)>,
    next: usize,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }
}

/// The trie. Filters must be valid (checked by the caller).
#[derive(Debug, Default)]
pub struct SubTree {
    root: Node,
    count: usize,
}

impl SubTree {
    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Add or replace a subscription; returns true if it already existed.
    pub fn insert(
        &mut self,
        filter: &str,
        group: Option<&str>,
        key: SubKey,
        entry: SubEntry,
    ) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        let existed = match group {
            None => node.subs.insert(key, entry).is_some(),
            Some(g) => {
                let group = node.shared.entry(Box::from(g)).or_default();
                match group.members.iter_mut().find(|(k, _)| *k == key) {
                    Some(m) => {
                        m.1 = entry;
                        true
                    }
                    None => {
                        group.members.push((key, entry));
                        false
                    }
                }
            }
        };
        if !existed {
            self.count += 1;
        }
        existed
    }

    /// Remove a subscription; returns true if it existed.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, key: SubKey) -> bool {
        let removed = remove_at(&mut self.root, Some(filter), group, key);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Whether the shared group `group` on `filter` has no members.
    pub fn group_is_empty(&self, filter: &str, group: &str) -> bool {
        let mut node = &self.root;
        for level in filter.split('/') {
            match node.children.get(level) {
                Some(n) => node = n,
                None => return true,
            }
        }
        node.shared.get(group).is_none_or(|g| g.members.is_empty())
    }

    /// Collect every subscriber whose filter matches `topic` into `out`. For
    /// each shared group one member is chosen, round robin, preferring members
    /// for which `online` is true.
    pub fn matches(&mut self, topic: &str, online: &dyn Fn(SubKey) -> bool, out: &mut Vec<Hit>) {
        let dollar = topic.starts_with('$');
        walk(&mut self.root, Some(topic), true, dollar, online, out);
    }
}

fn remove_at(node: &mut Node, rest: Option<&str>, group: Option<&str>, key: SubKey) -> bool {
    match rest {
        None => match group {
            None => node.subs.remove(&key).is_some(),
            Some(g) => {
                let Some(grp) = node.shared.get_mut(g) else {
                    return false;
                };
                let before = grp.members.len();
                grp.members.retain(|(k, _)| *k != key);
                let removed = grp.members.len() != before;
                if grp.members.is_empty() {
                    node.shared.remove(g);
                }
                removed
            }
        },
        Some(path) => {
            let (level, next) = split(path);
            let Some(child) = node.children.get_mut(level) else {
                return false;
            };
            let removed = remove_at(child, next, group, key);
            if child.is_empty() {
                node.children.remove(level);
            }
            removed
        }
    }
}

fn split(path: &str) -> (&str, Option<&str>) {
    match path.split_once('/') {
        Some((l, r)) => (l, Some(r)),
        None => (path, None),
    }
}

fn collect(node: &mut Node, online: &dyn Fn(SubKey) -> bool, out: &mut Vec<Hit>) {
    out.extend(node.subs.iter().map(|(&key, &entry)| Hit {
        key,
        entry,
        shared: false,
    }));
    for group in node.shared.values_mut() {
        let n = group.members.len();
        if n == 0 {
            continue;
        }
        let start = group.next % n;
        let pick = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| online(group.members[i].0))
            .unwrap_or(start);
        group.next = pick + 1;
        let (key, entry) = group.members[pick];
        out.push(Hit {
            key,
            entry,
            shared: true,
        });
    }
}

fn walk(
    node: &mut Node,
    rest: Option<&str>,
    first: bool,
    dollar: bool,
    online: &dyn Fn(SubKey) -> bool,
    out: &mut Vec<Hit>,
) {
    let wild_ok = !(first && dollar);
    let Some(path) = rest else {
        collect(node, online, out);
        // "a/#" also matches "a"
        if let Some(h) = node.children.get_mut("#") {
            collect(h, online, out);
        }
        return;
    };
    let (level, next) = split(path);
    if wild_ok {
        if let Some(h) = node.children.get_mut("#") {
            collect(h, online, out);
        }
        if let Some(p) = node.children.get_mut("+") {
            walk(p, next, false, dollar, online, out);
        }
    }
    if level != "+"
        && level != "#"
        && let Some(c) = node.children.get_mut(level)
    {
        walk(c, next, false, dollar, online, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_mqtt::QoS;

    fn entry(q: QoS) -> SubEntry {
        SubEntry {
            options: SubOptions {
                qos: q,
                ..SubOptions::default()
            },
            id: None,
        }
    }

    fn keys(tree: &mut SubTree, topic: &str) -> Vec<SubKey> {
        let mut out = Vec::new();
        tree.matches(topic, &|_| true, &mut out);
        let mut k: Vec<_> = out.iter().map(|h| h.key).collect();
        k.sort();
        k
    }

    #[test]
    fn wildcards_match_like_the_spec() {
        let mut t = SubTree::default();
        t.insert("sport/tennis/player1/#", None, 1, entry(QoS::AtMostOnce));
        t.insert("sport/+", None, 2, entry(QoS::AtMostOnce));
        t.insert("#", None, 3, entry(QoS::AtMostOnce));
        t.insert("+/+", None, 4, entry(QoS::AtMostOnce));
        t.insert("/+", None, 5, entry(QoS::AtMostOnce));
        t.insert("$SYS/#", None, 6, entry(QoS::AtMostOnce));
        t.insert("+/monitor/Clients", None, 7, entry(QoS::AtMostOnce));
        assert_eq!(keys(&mut t, "sport/tennis/player1"), vec![1, 3]);
        assert_eq!(keys(&mut t, "sport/tennis/player1/ranking"), vec![1, 3]);
        assert_eq!(keys(&mut t, "sport"), vec![3]);
        assert_eq!(keys(&mut t, "sport/"), vec![2, 3, 4]);
        assert_eq!(keys(&mut t, "/finance"), vec![3, 4, 5]);
        assert_eq!(keys(&mut t, "$SYS/monitor/Clients"), vec![6]);
        assert_eq!(keys(&mut t, "$SYS"), vec![6]);
    }

    #[test]
    fn insert_reports_existing_and_remove_prunes() {
        let mut t = SubTree::default();
        assert!(!t.insert("a/b", None, 1, entry(QoS::AtMostOnce)));
        assert!(t.insert("a/b", None, 1, entry(QoS::AtLeastOnce)));
        assert_eq!(t.len(), 1);
        assert!(t.remove("a/b", None, 1));
        assert!(!t.remove("a/b", None, 1));
        assert_eq!(t.len(), 0);
        assert!(t.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn shared_groups_deliver_to_one_member_round_robin() {
        let mut t = SubTree::default();
        t.insert("jobs/+", Some("g"), 1, entry(QoS::AtMostOnce));
        t.insert("jobs/+", Some("g"), 2, entry(QoS::AtMostOnce));
        t.insert("jobs/+", Some("h"), 3, entry(QoS::AtMostOnce));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let k = keys(&mut t, "jobs/1");
            assert_eq!(k.len(), 2);
            assert!(k.contains(&3));
            seen.push(k[0]);
        }
        assert_eq!(seen, vec![1, 2, 1, 2]);
        // offline members are skipped while an online one exists
        let mut out = Vec::new();
        for _ in 0..3 {
            out.clear();
            t.matches("jobs/1", &|k| k != 1, &mut out);
            assert!(out.iter().all(|h| h.key != 1));
        }
        assert!(t.remove("jobs/+", Some("g"), 1));
        assert_eq!(keys(&mut t, "jobs/x"), vec![2, 3]);
    }
}
