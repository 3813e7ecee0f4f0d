//! A Corefile (CoreDNS's and NodeLocal DNSCache's configuration) read far enough for the
//! checks: server blocks, and in each its plugins with their arguments and nested blocks.
//!
//! The grammar is Caddy's: a server block is one or more keys (`.:53`, `cluster.local:53`)
//! followed by `{ ... }`; inside, a directive is a line of tokens, optionally followed by a
//! `{ ... }` block of sub-directives. `#` starts a comment; tokens may be quoted. Imports
//! and environment placeholders are kept as plain tokens. Anything malformed (an unclosed
//! brace) ends the parse with what was read and a note, never an error: the checks then
//! see fewer plugins, and say what they could not find.

/// One directive: `forward . /etc/resolv.conf { prefer_udp }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The plugin or property name (`forward`, `prefer_udp`).
    pub name: String,
    /// The tokens after the name on its line.
    pub args: Vec<String>,
    /// The directives of its `{ }` block.
    pub block: Vec<Self>,
}

impl Directive {
    /// The first sub-directive of this name.
    pub fn sub(&self, name: &str) -> Option<&Self> {
        self.block.iter().find(|d| d.name == name)
    }
}

/// One server block: `.:53 { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBlock {
    /// Its keys (zones and ports).
    pub keys: Vec<String>,
    /// Its plugins, in order.
    pub plugins: Vec<Directive>,
}

impl ServerBlock {
    /// The plugins of this name (most appear once; `forward` may not).
    pub fn plugins<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Directive> {
        self.plugins.iter().filter(move |p| p.name == name)
    }

    /// Whether the block serves the root zone (`.`, `.:53`), where general queries go.
    pub fn is_root(&self) -> bool {
        self.keys
            .iter()
            .any(|k| k == "." || k.starts_with(".:") || k.starts_with("dns://.:"))
    }
}

/// A parsed Corefile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Corefile {
    /// Its server blocks, in order.
    pub blocks: Vec<ServerBlock>,
    /// What could not be read, if anything.
    pub note: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Open,
    Close,
    Newline,
}

fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '\n' => out.push(Token::Newline),
            c if c.is_whitespace() => {}
            // `{$VAR}` is an environment placeholder, a word; a brace alone opens a block.
            '{' if chars.peek() != Some(&'$') => out.push(Token::Open),
            '}' => out.push(Token::Close),
            '"' | '`' => {
                let mut word = String::new();
                while let Some(d) = chars.next() {
                    match d {
                        '\\' if c == '"' => word.extend(chars.next()),
                        d if d == c => break,
                        d => word.push(d),
                    }
                }
                out.push(Token::Word(word));
            }
            c => {
                let mut word = String::from(c);
                while let Some(&d) = chars.peek() {
                    // A brace ends a word only where it stands apart ("{$VAR}" is a word).
                    if d.is_whitespace() || (d == '}' && !word.contains('{')) || d == '#' {
                        break;
                    }
                    word.push(d);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
        }
    }
    out
}

/// Reads a Corefile; never fails (see the module docs).
pub fn parse(text: &str) -> Corefile {
    let tokens = tokens(text);
    let mut at = 0;
    let mut corefile = Corefile::default();
    loop {
        while matches!(tokens.get(at), Some(Token::Newline)) {
            at += 1;
        }
        let mut keys = Vec::new();
        while let Some(Token::Word(word)) = tokens.get(at) {
            keys.extend(word.split(',').filter(|k| !k.is_empty()).map(str::to_owned));
            at += 1;
        }
        match tokens.get(at) {
            None if keys.is_empty() => return corefile,
            Some(Token::Open) => {
                at += 1;
                let (plugins, closed) = directives(&tokens, &mut at);
                corefile.blocks.push(ServerBlock { keys, plugins });
                if !closed {
                    corefile.note = Some("a server block is not closed with '}'".to_owned());
                    return corefile;
                }
            }
            _ => {
                corefile.note = Some(format!(
                    "expected '{{' after the server block keys {}",
                    keys.join(" ")
                ));
                return corefile;
            }
        }
    }
}

/// Blocks nested deeper than this end the parse (a real Corefile nests two or three).
const MAX_DEPTH: usize = 32;

/// The directives up to the `}` closing the current block; says whether it was closed.
fn directives(tokens: &[Token], at: &mut usize) -> (Vec<Directive>, bool) {
    directives_at(tokens, at, 1)
}

fn directives_at(tokens: &[Token], at: &mut usize, depth: usize) -> (Vec<Directive>, bool) {
    if depth > MAX_DEPTH {
        return (Vec::new(), false);
    }
    let mut out: Vec<Directive> = Vec::new();
    let mut line: Vec<String> = Vec::new();
    let flush = |line: &mut Vec<String>, out: &mut Vec<Directive>| {
        if !line.is_empty() {
            let mut words = std::mem::take(line).into_iter();
            if let Some(name) = words.next() {
                out.push(Directive {
                    name,
                    args: words.collect(),
                    block: Vec::new(),
                });
            }
        }
    };
    while let Some(token) = tokens.get(*at) {
        *at += 1;
        match token {
            Token::Word(word) => line.push(word.clone()),
            Token::Newline => flush(&mut line, &mut out),
            Token::Open => {
                flush(&mut line, &mut out);
                let (block, closed) = directives_at(tokens, at, depth + 1);
                match out.last_mut() {
                    Some(last) if last.block.is_empty() => last.block = block,
                    _ => out.extend(block),
                }
                if !closed {
                    return (out, false);
                }
            }
            Token::Close => {
                flush(&mut line, &mut out);
                return (out, true);
            }
        }
    }
    flush(&mut line, &mut out);
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EKS: &str = r#".:53 {
    errors
    health {
        lameduck 5s
      }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
}
"#;

    #[test]
    fn the_eks_corefile_reads_as_one_root_block_with_nested_plugins() {
        let corefile = parse(EKS);
        assert_eq!(corefile.note, None);
        assert_eq!(corefile.blocks.len(), 1);
        let block = &corefile.blocks[0];
        assert!(block.is_root());
        let health = block.plugins("health").next().unwrap();
        assert_eq!(health.sub("lameduck").unwrap().args, ["5s"]);
        let forward = block.plugins("forward").next().unwrap();
        assert_eq!(forward.args, [".", "/etc/resolv.conf"]);
        assert!(block.plugins("ready").next().is_some());
        let kubernetes = block.plugins("kubernetes").next().unwrap();
        assert_eq!(kubernetes.block.len(), 2);
    }

    #[test]
    fn nodelocal_blocks_comments_quotes_and_placeholders() {
        let text = "cluster.local:53 {\n  errors\n  cache {\n    success 9984 30\n  }\n  \
                    bind 169.254.20.10 10.100.0.10 # the link-local address\n  \
                    forward . __PILLAR__CLUSTER__DNS__ {\n    force_tcp\n  }\n}\n\
                    .:53 {\n  forward . \"/etc/resolv.conf\" { force_tcp }\n  \
                    import {$EXTRA}\n}\n";
        let corefile = parse(text);
        assert_eq!(corefile.note, None);
        assert_eq!(corefile.blocks.len(), 2);
        assert!(!corefile.blocks[0].is_root());
        let forward = corefile.blocks[0].plugins("forward").next().unwrap();
        assert!(forward.sub("force_tcp").is_some());
        let bind = corefile.blocks[0].plugins("bind").next().unwrap();
        assert_eq!(bind.args, ["169.254.20.10", "10.100.0.10"]);
        let root = &corefile.blocks[1];
        assert!(root.is_root());
        let forward = root.plugins("forward").next().unwrap();
        assert_eq!(forward.args, [".", "/etc/resolv.conf"]);
        assert!(forward.sub("force_tcp").is_some());
        assert_eq!(root.plugins("import").next().unwrap().args, ["{$EXTRA}"]);
    }

    #[test]
    fn malformed_text_gives_what_was_read_and_a_note() {
        for text in [
            ".:53 {\n  health {\n",
            "}}}",
            ".:53\n errors\n",
            "{",
            "\"unclosed",
        ] {
            let corefile = parse(text);
            assert!(
                corefile.note.is_some() || corefile.blocks.is_empty(),
                "{text:?}"
            );
        }
        assert_eq!(parse(""), Corefile::default());
        // Nesting deep enough to overflow a stack ends the parse instead.
        let deep = format!(".:53 {{\n  ready\n  x {}", "{ ".repeat(100_000));
        let corefile = parse(&deep);
        assert!(corefile.note.is_some());
        assert!(corefile.blocks[0].plugins("ready").next().is_some());
        let partial = parse(".:53 {\n  ready\n  health {\n");
        assert!(partial.blocks[0].plugins("ready").next().is_some());
        assert!(partial.note.is_some());
    }
}
