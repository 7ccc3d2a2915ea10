//! The columnar form of events: what every reader produces.

use std::sync::Arc;

/// A column of optional strings in Arrow's layout: all bytes in one buffer,
/// `len + 1` offsets into it and one validity flag per row.
///
/// Pushing a row never allocates per row; the buffers grow amortised.
/// Offsets are `u32`: the readers bound a chunk so that a column stays far
/// below `u32::MAX` bytes (see `CHUNK_ROWS` and `MAX_FIELD_BYTES`).
///
/// A column may instead be *dictionary-encoded* (what the Parquet reader
/// makes of dictionary-encoded columns such as user ids and event types):
/// then the buffers hold each distinct value once and every row is a key into
/// them. Readers see the same rows either way; consumers that intern values
/// can use [`StrColumn::dictionary_keys`] to do it once per distinct value.
/// The Parquet reader shares one dictionary among the chunks of a row group
/// ([`StrColumn::dictionary`] tells), so such work can be kept across chunks.
#[derive(Debug, Clone)]
pub struct StrColumn {
    /// A `String`, not bytes: reading a row is then a slice, with no UTF-8
    /// check per read (the check happens once, when bytes come in).
    data: String,
    offsets: Vec<u32>,
    valid: Vec<bool>,
    /// Dictionary mode: the distinct values (a plain column, possibly shared
    /// with other columns) and each row's index into them, or
    /// [`StrColumn::NULL_KEY`]; the buffers above are then empty.
    dictionary: Option<(Arc<StrColumn>, Vec<u32>)>,
}

/// Columns are equal when their rows are, whatever their encoding.
impl PartialEq for StrColumn {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for StrColumn {}

impl Default for StrColumn {
    fn default() -> Self {
        Self::new()
    }
}

impl StrColumn {
    /// An empty column.
    pub fn new() -> Self {
        Self::with_capacity(0, 0)
    }

    /// An empty column with room for `rows` rows holding `bytes` bytes in total.
    pub fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self { data: String::with_capacity(bytes), offsets, valid: Vec::with_capacity(rows), dictionary: None }
    }

    /// The key of a null row in a dictionary-encoded column.
    pub const NULL_KEY: u32 = u32::MAX;

    /// A dictionary-encoded column: `values` holds the distinct values (a
    /// `None` or empty value reads as `None`), `keys` one index into them per
    /// row, or [`StrColumn::NULL_KEY`].
    ///
    /// # Panics
    /// If `values` is itself dictionary-encoded or a key is out of range.
    pub fn from_dictionary(values: StrColumn, keys: Vec<u32>) -> Self {
        Self::from_shared_dictionary(Arc::new(values), keys)
    }

    /// [`StrColumn::from_dictionary`] with values other columns may share.
    ///
    /// # Panics
    /// If `values` is itself dictionary-encoded or a key is out of range.
    pub fn from_shared_dictionary(values: Arc<StrColumn>, keys: Vec<u32>) -> Self {
        assert!(values.dictionary.is_none(), "dictionary values must be plain");
        let count = values.len() as u32;
        assert!(keys.iter().all(|&k| k < count || k == Self::NULL_KEY), "dictionary key out of range");
        Self { dictionary: Some((values, keys)), ..Self::new() }
    }

    /// In dictionary mode, the key of every row (see
    /// [`StrColumn::dictionary_value`]); `None` for a plain column.
    #[inline]
    pub fn dictionary_keys(&self) -> Option<&[u32]> {
        self.dictionary.as_ref().map(|(_, keys)| keys.as_slice())
    }

    /// In dictionary mode, the distinct values: columns that share them
    /// ([`Arc::ptr_eq`]) give each key the same value.
    #[inline]
    pub fn dictionary(&self) -> Option<&Arc<StrColumn>> {
        self.dictionary.as_ref().map(|(values, _)| values)
    }

    /// In dictionary mode, the value of a key, `None` for a null or empty
    /// value and for [`StrColumn::NULL_KEY`].
    ///
    /// # Panics
    /// If the column is plain or the key is out of range.
    #[inline]
    pub fn dictionary_value(&self, key: u32) -> Option<&str> {
        let (values, _) = self.dictionary.as_ref().expect("not a dictionary-encoded column");
        if key == Self::NULL_KEY { None } else { values.value(key as usize) }
    }

    /// Number of distinct values of a dictionary-encoded column, 0 for a plain one.
    pub fn dictionary_len(&self) -> usize {
        self.dictionary.as_ref().map_or(0, |(values, _)| values.len())
    }

    /// Turns a dictionary-encoded column into a plain one (before appending).
    #[cold]
    fn make_plain(&mut self) {
        let Some((values, keys)) = self.dictionary.take() else {
            return;
        };
        *self = Self::with_capacity(keys.len(), 0);
        for &key in &keys {
            let value = if key == Self::NULL_KEY { None } else { values.value(key as usize) };
            self.push(value);
        }
    }

    /// Appends a row: `Some` string (possibly empty) or `None`.
    ///
    /// # Panics
    /// If the column would hold more than `u32::MAX` bytes. The readers bound
    /// chunks far below that; a caller building columns by hand must too.
    #[inline]
    pub fn push(&mut self, value: Option<&str>) {
        match value {
            Some(s) => self.push_str(s),
            None => self.push_null(),
        }
    }

    /// Appends a `None` row.
    #[inline]
    pub(crate) fn push_null(&mut self) {
        self.make_plain();
        let end = self.end_offset();
        self.offsets.push(end);
        self.valid.push(false);
    }

    /// Appends `n` `None` rows.
    #[cfg_attr(not(feature = "parquet"), expect(dead_code, reason = "used by the Parquet reader"))]
    pub(crate) fn push_nulls(&mut self, n: usize) {
        self.make_plain();
        let end = self.end_offset();
        self.offsets.resize(self.offsets.len() + n, end);
        self.valid.resize(self.valid.len() + n, false);
    }

    /// Appends a present row.
    #[inline]
    pub(crate) fn push_str(&mut self, value: &str) {
        self.make_plain();
        self.data.push_str(value);
        self.close_row(true);
    }

    /// Appends a present row holding the decimal form of `value`.
    #[inline]
    pub(crate) fn push_int<I: itoa::Integer>(&mut self, value: I) {
        let mut buffer = itoa::Buffer::new();
        self.push_str(buffer.format(value));
    }

    /// A plain column that takes over `values` instead of copying them (the
    /// Parquet reader hands over Arrow's buffers when a batch held the only
    /// reference): `offsets` (`rows + 1` of them, from 0) delimit the rows in
    /// `values`, `is_valid` says whether a row is present. Empty strings become
    /// `None`, as in [`StrColumn::extend_utf8`].
    ///
    /// Gives `values` back when they are not such a column: not UTF-8, offsets
    /// out of order, past the end or inside a character, or more than
    /// `u32::MAX` bytes.
    #[cfg_attr(not(any(feature = "parquet", test)), expect(dead_code, reason = "used by the Parquet reader"))]
    pub(crate) fn from_utf8_buffer(
        values: Vec<u8>,
        offsets: &[i32],
        is_valid: impl Fn(usize) -> bool,
    ) -> Result<Self, Vec<u8>> {
        let in_order = offsets.first() == Some(&0)
            && usize::try_from(*offsets.last().unwrap_or(&-1)).ok() == Some(values.len())
            && offsets.windows(2).all(|pair| pair[0] <= pair[1]);
        if !in_order || u32::try_from(values.len()).is_err() {
            return Err(values);
        }
        let data = String::from_utf8(values).map_err(|error| error.into_bytes())?;
        // Every offset is in range (checked above); reading a row slices the text there.
        if !offsets.iter().all(|&offset| data.is_char_boundary(offset as usize)) {
            return Err(data.into_bytes());
        }
        let valid = offsets.windows(2).enumerate().map(|(i, pair)| pair[1] > pair[0] && is_valid(i)).collect();
        Ok(Self { data, offsets: offsets.iter().map(|&offset| offset as u32).collect(), valid, dictionary: None })
    }

    /// Appends the rows of an Arrow string array in bulk: `values` and
    /// `offsets` (`len + 1` of them, possibly not starting at 0) in Arrow's
    /// layout, and whether each row is valid. Empty strings become `None`.
    #[cfg_attr(not(any(feature = "parquet", test)), expect(dead_code, reason = "used by the Parquet reader"))]
    pub(crate) fn extend_utf8<O: Copy + Into<i64>>(
        &mut self,
        values: &[u8],
        offsets: &[O],
        is_valid: impl Fn(usize) -> bool,
    ) {
        let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
            return;
        };
        self.make_plain();
        let (first, last) = (first.into(), last.into());
        // Arrow string arrays hold valid UTF-8 values, so their concatenation is
        // valid too; one check per batch (SIMD-fast) instead of one per read.
        let text = std::str::from_utf8(&values[first as usize..last as usize]).expect("Arrow strings are UTF-8");
        self.data.push_str(text);
        let base = i64::from(self.end_offset()) - first;
        let end = u32::try_from(base + last).expect("StrColumn holds more than u32::MAX bytes");
        self.offsets.reserve(offsets.len() - 1);
        self.valid.reserve(offsets.len() - 1);
        for (i, pair) in offsets.windows(2).enumerate() {
            let (start, stop) = (pair[0].into(), pair[1].into());
            // In range: `base + stop <= end`, checked above.
            self.offsets.push((base + stop) as u32);
            self.valid.push(stop > start && is_valid(i));
        }
        debug_assert_eq!(self.end_offset(), end);
    }

    /// Ends the row being built: its bytes are everything appended since the
    /// previous row ended.
    #[inline]
    pub(crate) fn close_row(&mut self, valid: bool) {
        debug_assert!(self.dictionary.is_none(), "bytes were appended to a dictionary-encoded column");
        let end = u32::try_from(self.data.len()).expect("StrColumn holds more than u32::MAX bytes");
        self.offsets.push(end);
        self.valid.push(valid);
    }

    #[inline]
    fn end_offset(&self) -> u32 {
        // The last offset always exists: `with_capacity` pushes the first.
        self.offsets[self.offsets.len() - 1]
    }

    /// The value of row `i`, `None` for a null row.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&str> {
        match &self.dictionary {
            None => self.value(i),
            Some((values, keys)) => match keys[i] {
                Self::NULL_KEY => None,
                key => values.value(key as usize),
            },
        }
    }

    /// Row `i` of a plain column.
    #[inline]
    fn value(&self, i: usize) -> Option<&str> {
        if !self.valid[i] {
            return None;
        }
        // Rows are whole strings, so the offsets are on char boundaries.
        Some(&self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize])
    }

    /// Whether any row is not null (a scan of flags or keys, not of values).
    pub fn has_values(&self) -> bool {
        match &self.dictionary {
            None => self.valid.contains(&true),
            Some((values, keys)) => keys.iter().any(|&key| key != Self::NULL_KEY && values.valid[key as usize]),
        }
    }

    /// Number of rows.
    #[inline]
    pub fn len(&self) -> usize {
        self.dictionary.as_ref().map_or(self.valid.len(), |(_, keys)| keys.len())
    }

    /// Whether the column has no rows.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total bytes of all values (of the distinct values, for a dictionary).
    #[inline]
    pub fn byte_len(&self) -> usize {
        self.dictionary.as_ref().map_or(self.data.len(), |(values, _)| values.data.len())
    }

    /// Iterates over the rows in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Option<&str>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Removes every row, keeping the allocations.
    pub fn clear(&mut self) {
        self.dictionary = None;
        self.data.clear();
        self.offsets.truncate(1);
        self.valid.clear();
    }
}

/// A batch of events as columns of equal length.
///
/// Optional string fields hold `None` where the input had no value or an empty
/// string. `source_line` is the 1-based line of the event in its file for
/// NDJSON and CSV (the CSV header is line 1) and the 1-based row number for
/// Parquet, so that later stages can point back at the input.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventChunk {
    pub user_id: StrColumn,
    pub device_id: StrColumn,
    pub event_type: StrColumn,
    /// Event time in milliseconds since the Unix epoch, UTC.
    pub time_ms: Vec<i64>,
    pub insert_id: StrColumn,
    pub page: StrColumn,
    pub passive: Vec<bool>,
    pub source_line: Vec<u64>,
}

impl EventChunk {
    /// An empty chunk with room for `rows` rows.
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            user_id: StrColumn::with_capacity(rows, rows * 16),
            device_id: StrColumn::with_capacity(rows, 0),
            event_type: StrColumn::with_capacity(rows, rows * 12),
            time_ms: Vec::with_capacity(rows),
            insert_id: StrColumn::with_capacity(rows, rows * 32),
            page: StrColumn::with_capacity(rows, 0),
            passive: Vec::with_capacity(rows),
            source_line: Vec::with_capacity(rows),
        }
    }

    /// Number of events.
    #[inline]
    pub fn len(&self) -> usize {
        self.time_ms.len()
    }

    /// Whether the chunk has no events.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.time_ms.is_empty()
    }

    /// The largest byte size among the string columns: what the chunk byte
    /// bound is checked against.
    pub(crate) fn max_column_bytes(&self) -> usize {
        [
            self.user_id.byte_len(),
            self.device_id.byte_len(),
            self.event_type.byte_len(),
            self.insert_id.byte_len(),
            self.page.byte_len(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    /// Appends one validated event.
    #[inline]
    pub(crate) fn push_event(&mut self, event: EventRef<'_>, source_line: u64) {
        self.user_id.push(event.user_id);
        self.device_id.push(event.device_id);
        self.event_type.push(Some(event.event_type));
        self.time_ms.push(event.time_ms);
        self.insert_id.push(event.insert_id);
        self.page.push(event.page);
        self.passive.push(event.passive);
        self.source_line.push(source_line);
    }
}

/// One validated event borrowing its strings: what the text readers push.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventRef<'a> {
    pub(crate) user_id: Option<&'a str>,
    pub(crate) device_id: Option<&'a str>,
    pub(crate) event_type: &'a str,
    pub(crate) time_ms: i64,
    pub(crate) insert_id: Option<&'a str>,
    pub(crate) page: Option<&'a str>,
    pub(crate) passive: bool,
}

#[cfg(test)]
mod tests {
    use super::StrColumn;

    #[test]
    fn has_values_is_whether_any_row_reads_as_some() {
        let plain = |rows: &[Option<&str>]| {
            let mut column = StrColumn::new();
            rows.iter().for_each(|&row| column.push(row));
            column
        };
        assert!(!plain(&[]).has_values());
        assert!(!plain(&[None, None]).has_values());
        assert!(plain(&[None, Some("")]).has_values(), "an empty string is a value");
        assert!(plain(&[None, Some("/home")]).has_values());
        let dictionary = |values: &[Option<&str>], keys: Vec<u32>| {
            let column = StrColumn::from_dictionary(plain(values), keys);
            assert_eq!(column.has_values(), column.iter().any(|row| row.is_some()), "{column:?}");
            column.has_values()
        };
        assert!(!dictionary(&[Some("a")], vec![StrColumn::NULL_KEY, StrColumn::NULL_KEY]));
        assert!(!dictionary(&[None, Some("a")], vec![0, StrColumn::NULL_KEY, 0]));
        assert!(dictionary(&[None, Some("a")], vec![0, 1]));
    }
}
