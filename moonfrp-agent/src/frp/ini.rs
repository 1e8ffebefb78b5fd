//! The small INI dialect of frp's legacy configs: `[section]`, `key = value`, `#`/`;` comments.
/// One `[section]` with its keys in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub entries: Vec<(String, String)>,
}

impl Section {
    /// The last value given to `key` (frp, like Go's ini library, lets a later line win).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ini(Vec<Section>);

impl Ini {
    pub fn sections(&self) -> &[Section] {
        &self.0
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.0.iter().find(|s| s.name == name)
    }
}

/// Parses the text; errors name the line.
pub fn parse(text: &str) -> Result<Ini, String> {
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        // Errors name the line, never quote it: it may hold a password.
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: a section header with no closing `]`", i + 1))?;
            sections.push(Section {
                name: name.trim().to_owned(),
                entries: Vec::new(),
            });
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: not `key = value`", i + 1))?;
        let section = sections
            .last_mut()
            .ok_or_else(|| format!("line {}: a key before any [section]", i + 1))?;
        section
            .entries
            .push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(Ini(sections))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_keys_comments() {
        let ini =
            parse("# c\n[common]\nbind_port = 7000\n; c\nbind_port=7001\n\n[ssh]\ntype = tcp\n")
                .unwrap();
        assert_eq!(ini.sections().len(), 2);
        assert_eq!(
            ini.section("common").unwrap().get("bind_port"),
            Some("7001")
        );
        assert_eq!(ini.section("ssh").unwrap().get("type"), Some("tcp"));
        assert!(parse("key = before\n").unwrap_err().contains("line 1"));
        assert!(parse("[common\n").unwrap_err().contains("closing"));
        assert!(parse("[common]\njunk\n").unwrap_err().contains("line 2"));
    }
}
