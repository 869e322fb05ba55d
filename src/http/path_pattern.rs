//! Path patterns of rule tables: `/login`, `/api/*`, `/users/{id}/posts`.

/// A path pattern: segments to match exactly, `{name}` or `*` for any one segment, and a last
/// `*` for the rest (none included: `/api/*` matches `/api`).
#[derive(Clone, Debug)]
pub(super) struct Pattern {
    segments: Vec<Segment>,
    rest: bool,
}

#[derive(Clone, Debug)]
enum Segment {
    Exact(String),
    Any,
}

impl Pattern {
    pub(super) fn new(pattern: &str) -> Pattern {
        let mut segments: Vec<&str> = pattern.split('/').skip(1).collect();
        let rest = segments.last() == Some(&"*");
        if rest {
            segments.pop();
        }
        Pattern {
            segments: segments
                .into_iter()
                .map(|s| {
                    if s == "*" || (s.starts_with('{') && s.ends_with('}')) {
                        Segment::Any
                    } else {
                        Segment::Exact(s.to_string())
                    }
                })
                .collect(),
            rest,
        }
    }

    pub(super) fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/').skip(1);
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Exact(want), Some(got)) if want == got => {}
                (Segment::Any, Some(got)) if !got.is_empty() => {}
                _ => return false,
            }
        }
        self.rest || parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = Pattern::new("/api/*");
        assert!(p.matches("/api") && p.matches("/api/") && p.matches("/api/x/y"));
        assert!(!p.matches("/apix") && !p.matches("/"));
        let p = Pattern::new("/users/{id}/posts");
        assert!(p.matches("/users/7/posts"));
        assert!(!p.matches("/users//posts") && !p.matches("/users/7/posts/1"));
        assert!(!p.matches("/users/7"));
        let p = Pattern::new("/login");
        assert!(p.matches("/login") && !p.matches("/login/x") && !p.matches("/logi"));
        assert!(Pattern::new("/*").matches("/anything/at/all"));
        assert!(Pattern::new("/*").matches("/"));
    }
}
