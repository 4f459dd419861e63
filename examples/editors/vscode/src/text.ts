// Text handling for the extension that needs no VS Code, so the tests can check it.

/** The daemon reads the last 8,000 characters of a prefix (docs/protocol.md); more is wasted bandwidth. */
export const PREFIX_CHARS = 8000;
/** The daemon's window starts at multiples of 2,000 characters from the start of what it is sent. */
export const PREFIX_STEP = 2000;
export const SUFFIX_CHARS = 2000;

function isLowSurrogate(text: string, i: number): boolean {
  const c = text.charCodeAt(i);
  return c >= 0xdc00 && c <= 0xdfff;
}

// The cuts never split a surrogate pair: half a character would reach the daemon as an invalid one.

/**
 * The end of `text` to send: at least its last `max` characters, cut at a multiple of `step` from the
 * document's start. A cut that slid with every keystroke would move the daemon's window too, so each
 * request would read a different text and the daemon's prefix cache could not serve the next one; cut
 * in steps, a request after a few more keystrokes extends the previous one.
 */
export function clipPrefix(text: string, max = PREFIX_CHARS, step = PREFIX_STEP): string {
  if (text.length <= max) return text;
  const at = Math.floor((text.length - max) / step) * step;
  return text.slice(isLowSurrogate(text, at) ? at + 1 : at);
}

/** The first `max` characters of `text`. */
export function clipSuffix(text: string, max = SUFFIX_CHARS): string {
  if (text.length <= max) return text;
  return text.slice(0, isLowSurrogate(text, max) ? max - 1 : max);
}

function leadingSpace(line: string): string {
  return /^[ \t]*/.exec(line)![0];
}

/**
 * The lines to insert after a definition's first line for a docstring (Python style): indented one
 * `indentUnit` deeper than `firstLine`, whatever indentation the model gave them (its first line is
 * stripped, the others keep their indentation relative to each other, as `inspect.cleandoc` does).
 */
export function docstringInsertion(firstLine: string, docstring: string, indentUnit: string): string {
  const lines = docstring.replace(/\r\n/g, '\n').trim().split('\n');
  const rest = lines.slice(1).filter((l) => l.trim());
  const common = rest.length ? Math.min(...rest.map((l) => leadingSpace(l).length)) : 0;
  const indent = leadingSpace(firstLine) + indentUnit;
  return (
    lines
      .map((l, i) => (i === 0 ? l.trim() : l.slice(common).trimEnd()))
      .map((l) => (l ? indent + l : ''))
      .join('\n') + '\n'
  );
}

/**
 * A reply to rewrite or translate, fitted in place of `selected`: the reply's surrounding whitespace
 * is replaced by the selection's own, so an indented whole-line selection stays indented and ends
 * with its newline.
 */
export function fitReplacement(selected: string, reply: string): string {
  const lead = leadingSpace(selected);
  const trail = /\s*$/.exec(selected)![0];
  return lead + reply.trim() + trail;
}
