import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { clipPrefix, clipSuffix, docstringInsertion, fitReplacement } from '../text';

describe('clipping', () => {
  it('keeps short text and never splits a surrogate pair', () => {
    assert.equal(clipPrefix('abc', 5), 'abc');
    assert.equal(clipPrefix('abcdef', 3), 'abcdef'); // the cut moves in steps of 2,000 by default
    assert.equal(clipPrefix('abcdefgh', 3, 2), 'efgh');
    assert.equal(clipPrefix('a\u{1F600}b', 2, 1), 'b'); // the cut fell inside the emoji
  });

  it('cuts at the same place while the user types, so each request extends the last', () => {
    assert.equal(clipPrefix('abcdefgh', 3, 4), 'efgh');
    assert.equal(clipPrefix('abcdefghX', 3, 4), 'efghX');
    assert.equal(clipPrefix('abcdefghXY', 3, 4), 'efghXY');
    assert.equal(clipPrefix('abcdefghXYZ', 3, 4), 'XYZ'); // a whole step on: the cut moves once
    assert.equal(clipSuffix('abcdef', 3), 'abc');
    assert.equal(clipSuffix('a\u{1F600}b', 2), 'a');
  });
});

describe('docstringInsertion', () => {
  it('indents the docstring one level below the first line, whatever the model indented', () => {
    const doc = '    """Add two numbers.\n\n    Returns their sum.\n    """  ';
    assert.equal(
      docstringInsertion('    def add(a, b):', doc, '    '),
      '        """Add two numbers.\n\n        Returns their sum.\n        """\n',
    );
    assert.equal(docstringInsertion('def f():', '"""One line."""', '\t'), '\t"""One line."""\n');
  });
});

describe('fitReplacement', () => {
  it("puts the selection's own surrounding whitespace around the reply", () => {
    assert.equal(fitReplacement('    x = 1\n', ' y = 2\n\n'), '    y = 2\n');
    assert.equal(fitReplacement('Hallo Welt', 'Hello world'), 'Hello world');
  });
});
