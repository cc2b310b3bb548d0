//! The one reader of a policy directory: loading, `validate`, `fmt`, `test`
//! and the reload test gate all see the same files, read by the same rules.
//!
//! - The walk starts at the resolved root and follows symlinks, at most
//!   [`MAX_DEPTH`] levels deep, which also stops symlink loops.
//! - Hidden entries (a name starting with `.`) are skipped below the root, so
//!   a ConfigMap's `..data` and `..2026_…` folders are read only through the
//!   visible symlinks that point into them, and editors' and `fmt`'s
//!   temporary files are never read.
//! - A file is read through its resolved path; one larger than
//!   [`MAX_FILE_BYTES`] is refused rather than read whole.
//! - A read is kept only if every path still resolves the same way
//!   afterwards: otherwise a symlink swap (kubelet, git-sync) happened
//!   mid-read and files from two versions could mix.
//!
//! Fixtures are read only when a test names them ([`TestFiles::fixture`]),
//! by the same rules.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// Why the directory, or a file in it, could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How deep the walk goes, symlinked folders included; guards against loops.
pub const MAX_DEPTH: usize = 32;
/// A file larger than this is refused rather than read whole.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// How often a read is retried when the directory changes under it.
const READ_ATTEMPTS: usize = 8;

/// What a file of the directory is, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `*.cedar`.
    Policies,
    /// `*.cedarschema`.
    CedarSchema,
    /// `*.cedarschema.json`.
    JsonSchema,
    /// `*.entities.json`.
    Entities,
    /// `*.links.json`: template links, the time-bound grants.
    Links,
    /// `*.test.yaml`, `*.test.yml`, `*.test.json`.
    Tests,
}

impl FileKind {
    /// The kind of a file named `name`; `None` for a file the directory does
    /// not use by name (a fixture is read only when a test names it).
    pub fn of(name: &str) -> Option<Self> {
        if name.ends_with(".cedarschema.json") {
            Some(Self::JsonSchema)
        } else if name.ends_with(".cedarschema") {
            Some(Self::CedarSchema)
        } else if name.ends_with(".entities.json") {
            Some(Self::Entities)
        } else if name.ends_with(".links.json") {
            Some(Self::Links)
        } else if is_test_file(name) {
            Some(Self::Tests)
        } else if name.ends_with(".cedar") {
            Some(Self::Policies)
        } else {
            None
        }
    }

    /// Whether files of this kind make up the policy set (and its revision).
    fn is_policy_input(self) -> bool {
        self != Self::Tests
    }
}

/// Whether `name` is a policy test file.
pub fn is_test_file(name: &str) -> bool {
    name.ends_with(".test.yaml") || name.ends_with(".test.yml") || name.ends_with(".test.json")
}

/// Whether an entry named `name` is hidden, and so not part of the directory.
fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// One file of the directory, as read.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Relative to the policy directory, with `/` separators.
    pub(super) rel: String,
    /// Where the file resolved to when it was read.
    pub(super) target: PathBuf,
    pub(super) kind: FileKind,
    pub(super) text: String,
    /// The inode read: the same one with new text means an in-place write.
    pub(super) inode: u64,
}

impl SourceFile {
    /// The path relative to the policy directory, with `/` separators.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// The resolved path the text was read from (symlinks followed).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// What the file is.
    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// The contents.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The raw contents of a policy directory, read but not parsed.
#[derive(Debug)]
pub struct Sources {
    pub(super) root: PathBuf,
    /// Every file the directory uses, sorted by relative path.
    pub(super) files: Vec<SourceFile>,
    /// Over the policy set's files only: tests are not part of the revision.
    pub(super) digest: String,
    pub(super) git: Option<GitCommit>,
    resolved: Resolved,
}

/// The git commit a policy directory was checked out from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitCommit {
    /// Full hex object id of `HEAD`.
    pub id: String,
    /// A file read differs from (or is missing in) that commit.
    pub dirty: bool,
}

impl Sources {
    /// SHA-256 over every policy, schema, entities and links file's
    /// relative path and content.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The commit the files came from, when the directory is in a git checkout.
    pub fn git(&self) -> Option<&GitCommit> {
        self.git.as_ref()
    }

    /// The revision shown to clients: the short digest, and the short commit
    /// id when there is one (`-dirty` when the files differ from it).
    pub fn revision(&self) -> String {
        let digest = format!("sha256:{}", &self.digest[..16]);
        match &self.git {
            Some(git) => format!(
                "{digest}+git:{}{}",
                &git.id[..git.id.len().min(12)],
                if git.dirty { "-dirty" } else { "" }
            ),
            None => digest,
        }
    }

    /// Every file read, sorted by relative path.
    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    /// The test files of this read, with a reader for the fixtures they name.
    pub fn tests(&self) -> TestFiles {
        TestFiles {
            root: self.resolved.canonical.clone(),
            files: self
                .files
                .iter()
                .filter(|f| f.kind == FileKind::Tests)
                .map(|f| (f.rel.clone(), f.text.clone()))
                .collect(),
            fixtures: BTreeMap::new(),
            resolved: self.resolved.clone(),
        }
    }
}

/// The test files of one read of a policy directory, and the fixtures they
/// name, read by the same rules as the rest; see [`Sources::tests`].
#[derive(Clone, Debug)]
pub struct TestFiles {
    /// The resolved root the files were read under.
    root: PathBuf,
    /// Relative path and text, sorted by path.
    files: Vec<(String, String)>,
    /// Fixtures read so far, by relative path.
    fixtures: BTreeMap<String, String>,
    resolved: Resolved,
}

impl TestFiles {
    /// Each test file's relative path and text, sorted by path.
    pub fn files(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files
            .iter()
            .map(|(rel, text)| (rel.as_str(), text.as_str()))
    }

    /// The fixture at `rel` (relative to the directory, `/`-separated),
    /// read once. `None` when no such file is part of the directory: it is
    /// missing, not a file, hidden, deeper than [`MAX_DEPTH`], or `rel`
    /// climbs out of the directory.
    pub fn fixture(&mut self, rel: &str) -> Result<Option<String>, ReadError> {
        if let Some(text) = self.fixtures.get(rel) {
            return Ok(Some(text.clone()));
        }
        let mut path = self.root.clone();
        let mut depth = 0;
        for component in Path::new(rel).components() {
            match component {
                Component::Normal(part) if !is_hidden(&part.to_string_lossy()) => {
                    path.push(part);
                    depth += 1;
                }
                _ => return Ok(None),
            }
        }
        if depth == 0 || depth > MAX_DEPTH {
            return Ok(None);
        }
        let (target, text) = match read_file(&path) {
            Ok((target, text, _)) => (target, text),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
                ) =>
            {
                return Ok(None);
            }
            Err(source) => return Err(ReadError::Io { path, source }),
        };
        self.resolved.files.push((path, target));
        self.fixtures.insert(rel.to_string(), text.clone());
        Ok(Some(text))
    }

    /// The fixtures read so far, by relative path.
    pub fn fixture_names(&self) -> impl Iterator<Item = &str> {
        self.fixtures.keys().map(String::as_str)
    }

    /// SHA-256 over every test file and every fixture read so far.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        let fixtures = self.fixtures.iter().map(|(r, t)| (r.as_str(), t.as_str()));
        // Tagged, so a test file and a fixture of one name hash apart.
        for (tag, (rel, text)) in self
            .files()
            .map(|f| (b't', f))
            .chain(fixtures.map(|f| (b'f', f)))
        {
            hasher.update([tag]);
            hash_file(&mut hasher, rel, text);
        }
        hex::encode(hasher.finalize())
    }

    /// Whether the directory and every file read, fixtures included, still
    /// resolve as they did: no symlink swap happened since.
    pub fn still_resolves(&self) -> bool {
        self.resolved.still_holds()
    }
}

/// Reads every file the directory uses (policies, schema, entities, tests)
/// under `root`, as one consistent version of the directory; see the module
/// docs for the rules.
pub fn read_dir(root: &Path) -> Result<Sources, ReadError> {
    let mut last = None;
    for _ in 0..READ_ATTEMPTS {
        match read_once(root) {
            Ok(sources) if sources.resolved.still_holds() => return Ok(sources),
            Ok(_) => {
                last = Some(ReadError::Io {
                    path: root.to_path_buf(),
                    source: io::Error::other("directory changed while it was read"),
                });
            }
            Err(Attempt::Moved(e)) => last = Some(e),
            Err(Attempt::Fatal(e)) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ReadError::Io {
        path: root.to_path_buf(),
        source: io::Error::other("directory kept changing while it was read"),
    }))
}

/// [`read_dir`] twice, with `between` run between the reads: kept only when
/// both reads hold the same files. A file cut off mid-write can still parse
/// (a `.cedar` file cut after a `;` loses its trailing `forbid`s), so one
/// read is not enough while something writes in place.
pub fn read_settled(root: &Path, mut between: impl FnMut()) -> Result<Sources, ReadError> {
    for _ in 0..READ_ATTEMPTS {
        let first = read_dir(root)?;
        between();
        let second = read_dir(root)?;
        let same = first.files.len() == second.files.len()
            && first
                .files
                .iter()
                .zip(&second.files)
                .all(|(a, b)| a.rel == b.rel && a.text == b.text);
        if same {
            return Ok(second);
        }
    }
    Err(ReadError::Io {
        path: root.to_path_buf(),
        source: io::Error::other(
            "files kept changing between two reads; deliver policies by an atomic swap (rename, ConfigMap, git-sync)",
        ),
    })
}

/// One read's failure.
enum Attempt {
    /// Something vanished mid-read: a symlink swap, worth a retry.
    Moved(ReadError),
    Fatal(ReadError),
}

/// Where the root and every file resolved to during one read.
#[derive(Clone, Debug)]
struct Resolved {
    /// The root as given.
    root: PathBuf,
    canonical: PathBuf,
    /// Each file as walked, and its target.
    files: Vec<(PathBuf, PathBuf)>,
}

impl Resolved {
    fn still_holds(&self) -> bool {
        std::fs::canonicalize(&self.root).is_ok_and(|r| r == self.canonical)
            && self
                .files
                .iter()
                .all(|(link, target)| std::fs::canonicalize(link).is_ok_and(|t| &t == target))
    }
}

/// Reads one file through its resolved path. A file over [`MAX_FILE_BYTES`]
/// is `FileTooLarge`, even one that grows while it is read; anything but a
/// file is `InvalidInput`.
fn read_file(path: &Path) -> io::Result<(PathBuf, String, u64)> {
    let target = std::fs::canonicalize(path)?;
    let file = std::fs::File::open(&target)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file"));
    }
    let too_large = || {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        )
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut text = String::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok((target, text, std::os::unix::fs::MetadataExt::ino(&meta)))
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn hash_file(hasher: &mut Sha256, rel: &str, text: &str) {
    hasher.update((rel.len() as u64).to_le_bytes());
    hasher.update(rel.as_bytes());
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
}

/// The directory's entries by the reading rules: symlinks followed, at
/// most [`MAX_DEPTH`] deep, hidden entries below the root skipped, in name
/// order.
fn walk(canonical_root: &Path) -> impl Iterator<Item = walkdir::Result<walkdir::DirEntry>> {
    walkdir::WalkDir::new(canonical_root)
        .follow_links(true)
        .max_depth(MAX_DEPTH)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !is_hidden(&e.file_name().to_string_lossy()))
}

fn read_once(root: &Path) -> Result<Sources, Attempt> {
    let io_error = |path: &Path, source: io::Error| {
        let moved = source.kind() == io::ErrorKind::NotFound;
        let err = ReadError::Io {
            path: path.to_path_buf(),
            source,
        };
        if moved {
            Attempt::Moved(err)
        } else {
            Attempt::Fatal(err)
        }
    };
    // A missing root is a configuration problem, not a swap in progress.
    let canonical_root = std::fs::canonicalize(root).map_err(|source| {
        Attempt::Fatal(ReadError::Io {
            path: root.to_path_buf(),
            source,
        })
    })?;
    if !canonical_root.is_dir() {
        return Err(Attempt::Fatal(ReadError::Io {
            path: root.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        }));
    }
    let walker = walk(&canonical_root);
    let mut files = Vec::new();
    let mut resolved = Vec::new();
    for entry in walker {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            io_error(&path, e.into())
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let Some(kind) = FileKind::of(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        let path = entry.path();
        let (target, text, inode) = read_file(path).map_err(|e| io_error(path, e))?;
        let rel = relative(&canonical_root, path);
        files.push(SourceFile {
            rel,
            target: target.clone(),
            kind,
            text,
            inode,
        });
        resolved.push((path.to_path_buf(), target));
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));

    let mut hasher = Sha256::new();
    for f in files.iter().filter(|f| f.kind.is_policy_input()) {
        hash_file(&mut hasher, &f.rel, &f.text);
    }
    let digest = hex::encode(hasher.finalize());
    let git = git_commit(&canonical_root, &files);
    Ok(Sources {
        root: root.to_path_buf(),
        files,
        digest,
        git,
        resolved: Resolved {
            root: root.to_path_buf(),
            canonical: canonical_root,
            files: resolved,
        },
    })
}

/// What the directory's files are, without reading them: each file's
/// path, the file it resolves to, and that file's inode, size, and change
/// and modification times, walked by the rules a read follows. A periodic
/// rescan compares it with the one taken before the last read, so an idle
/// directory costs a walk and a `stat` per file, never a read.
pub fn fingerprint(root: &Path) -> Result<String, ReadError> {
    use std::os::unix::fs::MetadataExt;
    let io = |path: &Path, source: io::Error| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let canonical_root = std::fs::canonicalize(root).map_err(|e| io(root, e))?;
    let walker = walk(&canonical_root);
    let mut hasher = Sha256::new();
    hasher.update(canonical_root.as_os_str().as_encoded_bytes());
    for entry in walker {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            io(&path, e.into())
        })?;
        if !entry.file_type().is_file()
            || FileKind::of(&entry.file_name().to_string_lossy()).is_none()
        {
            continue;
        }
        let path = entry.path();
        let target = std::fs::canonicalize(path).map_err(|e| io(path, e))?;
        let meta = std::fs::metadata(&target).map_err(|e| io(path, e))?;
        hasher.update(relative(&canonical_root, path).as_bytes());
        hasher.update([0]);
        hasher.update(target.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        for n in [
            meta.ino(),
            meta.size(),
            meta.mtime().cast_unsigned(),
            meta.mtime_nsec().cast_unsigned(),
            meta.ctime().cast_unsigned(),
            meta.ctime_nsec().cast_unsigned(),
        ] {
            hasher.update(n.to_le_bytes());
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The `HEAD` commit of the git checkout holding `dir` (a resolved path, so
/// git-sync's symlinked worktrees name their own commit), read with gix: no
/// `git` binary. `None` outside a checkout or when the repository is unreadable.
fn git_commit(dir: &Path, files: &[SourceFile]) -> Option<GitCommit> {
    let repo = gix::discover(dir).ok()?;
    let commit = repo.head_commit().ok()?;
    let id = commit.id().to_string();
    // Compare what was read with the commit, so uncommitted edits show.
    let dirty = (|| {
        let workdir = std::fs::canonicalize(repo.workdir()?).ok()?;
        let prefix = dir.strip_prefix(&workdir).ok()?.to_path_buf();
        let tree = commit.tree().ok()?;
        Some(files.iter().filter(|f| f.kind.is_policy_input()).any(|f| {
            let path = prefix.join(&f.rel);
            match tree.lookup_entry_by_path(&path) {
                Ok(Some(entry)) => entry
                    .object()
                    .map_or(true, |blob| blob.data != f.text.as_bytes()),
                _ => true,
            }
        }))
    })()
    .unwrap_or(true);
    Some(GitCommit { id, dirty })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn rels(sources: &Sources) -> Vec<&str> {
        sources.files().iter().map(SourceFile::rel).collect()
    }

    #[test]
    fn kinds_by_suffix() {
        assert_eq!(FileKind::of("a.cedar"), Some(FileKind::Policies));
        assert_eq!(FileKind::of("a.cedarschema"), Some(FileKind::CedarSchema));
        assert_eq!(
            FileKind::of("a.cedarschema.json"),
            Some(FileKind::JsonSchema)
        );
        assert_eq!(FileKind::of("a.entities.json"), Some(FileKind::Entities));
        assert_eq!(FileKind::of("grants.links.json"), Some(FileKind::Links));
        assert_eq!(FileKind::of("a.test.yaml"), Some(FileKind::Tests));
        assert_eq!(FileKind::of("a.json"), None);
        assert_eq!(FileKind::of("a.fixture.json"), None);
    }

    #[test]
    fn test_files_by_suffix() {
        assert!(is_test_file("mesh.test.yaml"));
        assert!(is_test_file("mesh.test.yml"));
        assert!(is_test_file("mesh.test.json"));
        assert!(!is_test_file("mesh.entities.json"));
        assert!(!is_test_file("shared.fixture.json"));
        assert!(!is_test_file("test.yaml"));
    }

    #[test]
    fn hidden_entries_are_not_part_of_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.cedar",
            "permit(principal, action, resource);",
        );
        write(dir.path(), ".b.cedar", "not read");
        write(dir.path(), ".git/c.cedar", "not read");
        write(dir.path(), "a.test.yaml", "cases: []");
        write(dir.path(), ".a.test.yaml", "not read");
        write(dir.path(), "people.fixture.json", "[]");
        write(dir.path(), ".hidden.fixture.json", "[]");
        write(dir.path(), ".hide/people.fixture.json", "[]");
        let sources = read_dir(dir.path()).unwrap();
        assert_eq!(rels(&sources), ["a.cedar", "a.test.yaml"]);
        let mut tests = sources.tests();
        assert_eq!(tests.files().count(), 1);
        assert!(tests.fixture("people.fixture.json").unwrap().is_some());
        assert_eq!(tests.fixture(".hidden.fixture.json").unwrap(), None);
        assert_eq!(tests.fixture(".hide/people.fixture.json").unwrap(), None);
        assert_eq!(tests.fixture("../people.fixture.json").unwrap(), None);
        assert_eq!(tests.fixture("missing.json").unwrap(), None);
        assert_eq!(
            tests.fixture_names().collect::<Vec<_>>(),
            ["people.fixture.json"]
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_followed_and_configmap_folders_read_through_them() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        // A ConfigMap volume: `..data` -> a timestamped folder, and a visible
        // symlink per key.
        write(
            dir.path(),
            "..2026_01_01/a.cedar",
            "permit(principal, action, resource);",
        );
        symlink("..2026_01_01", dir.path().join("..data")).unwrap();
        symlink("..data/a.cedar", dir.path().join("a.cedar")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let linked = write(
            outside.path(),
            "linked.cedar",
            "forbid(principal, action, resource);",
        );
        symlink(&linked, dir.path().join("b.cedar")).unwrap();
        let sources = read_dir(dir.path()).unwrap();
        assert_eq!(rels(&sources), ["a.cedar", "b.cedar"]);
        assert_eq!(
            sources.files()[1].target(),
            std::fs::canonicalize(&linked).unwrap()
        );
        assert!(sources.files()[1].text().starts_with("forbid"));
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.cedar",
            "permit(principal, action, resource);",
        );
        symlink(".", dir.path().join("loop")).unwrap();
        assert!(matches!(read_dir(dir.path()), Err(ReadError::Io { .. })));
    }

    /// A writer finishing the file between the reads: the cut-off version
    /// is never what the read returns.
    #[test]
    fn a_file_written_in_place_is_read_only_once_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let full = "permit(principal, action, resource);\nforbid(principal, action, resource) when { context.risky };\n";
        let cut = &full[..full.find(';').unwrap() + 1];
        write(dir.path(), "a.cedar", cut);
        let mut writes = 0;
        let sources = read_settled(dir.path(), || {
            if writes == 0 {
                write(dir.path(), "a.cedar", full);
            }
            writes += 1;
        })
        .unwrap();
        assert_eq!(sources.files()[0].text(), full);
        assert_eq!(writes, 2, "the first pair differed, the second agreed");

        // A writer that never stops is an error, not a cut-off set.
        let mut n = 0;
        let err = read_settled(dir.path(), || {
            n += 1;
            write(dir.path(), "a.cedar", &format!("{full}// {n}\n"));
        })
        .unwrap_err();
        assert!(err.to_string().contains("atomic swap"), "{err}");
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = write(dir.path(), "big.fixture.json", "");
        std::fs::File::options()
            .write(true)
            .open(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let err = read_file(&big).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        write(
            dir.path(),
            "a.cedar",
            "permit(principal, action, resource);",
        );
        let mut tests = read_dir(dir.path()).unwrap().tests();
        assert!(matches!(
            tests.fixture("big.fixture.json"),
            Err(ReadError::Io { .. })
        ));
        std::fs::rename(&big, dir.path().join("big.cedar")).unwrap();
        let Err(ReadError::Io { path, source }) = read_dir(dir.path()) else {
            panic!("a file over the limit was read");
        };
        assert!(path.ends_with("big.cedar"), "{path:?}");
        assert_eq!(source.kind(), io::ErrorKind::FileTooLarge);
    }

    #[test]
    fn tests_are_read_but_not_part_of_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.cedar",
            "permit(principal, action, resource);",
        );
        let before = read_dir(dir.path()).unwrap();
        write(dir.path(), "a.test.yaml", "cases: []");
        let after = read_dir(dir.path()).unwrap();
        assert_eq!(before.digest(), after.digest());
        assert_ne!(before.tests().digest(), after.tests().digest());
        let mut tests = after.tests();
        let plain = tests.digest();
        write(dir.path(), "x.fixture.json", "[]");
        tests.fixture("x.fixture.json").unwrap().unwrap();
        assert_ne!(tests.digest(), plain, "a fixture read counts");
    }
}
