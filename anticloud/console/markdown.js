// A small markdown renderer that cannot run script: it builds DOM nodes and gives every piece of
// text to createTextNode or textContent, never to an HTML parser. Markup in an answer (a <script>,
// an <img onerror>, a link) is shown as the characters it is made of.
//
// Supported: paragraphs, line breaks, **bold** (or __bold__), *italic* (or _italic_), `code`,
// fenced code blocks (``` or ~~~), bulleted and numbered lists, and # headings (shown as bold
// paragraphs, so that an answer cannot change the page's outline). Links and images stay text:
// a click in an answer must not send the person anywhere. An unclosed fence (an answer still
// streaming) renders as code up to the end.

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
const HEADING = /^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$/;
const CONTINUATION = /^\s{2,}\S/;

function startsBlock(line) {
  return FENCE.test(line) || BULLET.test(line) || NUMBERED.test(line) || HEADING.test(line);
}

/** The blocks of ``source``: {type: "p"|"heading"|"code"|"ul"|"ol", text|items, start?, lang?}. */
export function blocks(source) {
  const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
  const found = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !closesFence(lines[i], fence[1])) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence, if there is one
      found.push({ type: "code", lang: fence[2], text: body.join("\n") });
    } else if (line.trim() === "") {
      i += 1;
    } else if (HEADING.test(line)) {
      found.push({ type: "heading", text: HEADING.exec(line)[1] });
      i += 1;
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      const ordered = !BULLET.test(line);
      const pattern = ordered ? NUMBERED : BULLET;
      const items = [];
      const start = ordered ? Number(NUMBERED.exec(line)[1]) : 1;
      while (i < lines.length && pattern.test(lines[i])) {
        const match = pattern.exec(lines[i]);
        let item = ordered ? match[2] : match[1];
        i += 1;
        while (i < lines.length && CONTINUATION.test(lines[i]) && !startsBlock(lines[i])) {
          item += "\n" + lines[i].trim();
          i += 1;
        }
        items.push(item);
      }
      found.push({ type: ordered ? "ol" : "ul", start, items });
    } else {
      const paragraph = [];
      while (i < lines.length && lines[i].trim() !== "" && !startsBlock(lines[i])) {
        paragraph.push(lines[i]);
        i += 1;
      }
      found.push({ type: "p", text: paragraph.join("\n") });
    }
  }
  return found;
}

function closesFence(line, opening) {
  const trimmed = line.trim();
  return trimmed.length >= opening.length && trimmed === opening[0].repeat(trimmed.length);
}

/** ``source`` as a DocumentFragment of paragraphs, lists and code, with no HTML parsed. */
export function renderMarkdown(source, doc = document) {
  const fragment = doc.createDocumentFragment();
  for (const block of blocks(source)) {
    fragment.append(renderBlock(block, doc));
  }
  return fragment;
}

function renderBlock(block, doc) {
  if (block.type === "code") {
    const pre = doc.createElement("pre");
    const code = doc.createElement("code");
    if (block.lang) {
      code.dataset.language = block.lang;
    }
    code.textContent = block.text;
    pre.append(code);
    return pre;
  }
  if (block.type === "ul" || block.type === "ol") {
    const list = doc.createElement(block.type);
    if (block.type === "ol" && block.start !== 1) {
      list.start = block.start;
    }
    for (const item of block.items) {
      const li = doc.createElement("li");
      renderInline(item, li, doc);
      list.append(li);
    }
    return list;
  }
  const paragraph = doc.createElement("p");
  if (block.type === "heading") {
    paragraph.className = "heading";
  }
  renderInline(block.text, paragraph, doc);
  return paragraph;
}

function isSpace(ch) {
  return ch === undefined || /\s/.test(ch);
}

function isWordChar(ch) {
  return ch !== undefined && /[\p{L}\p{N}]/u.test(ch);
}

/** Where the emphasis ``mark`` opened at ``from`` closes, or -1: the text inside is not empty, does
 * not start or end with a space, and a single mark is not half of a double one. */
function closing(text, mark, from) {
  if (isSpace(text[from])) {
    return -1;
  }
  for (let j = text.indexOf(mark, from + 1); j !== -1; j = text.indexOf(mark, j + 1)) {
    if (isSpace(text[j - 1])) {
      continue;
    }
    if (mark.length === 1 && (text[j + 1] === mark || text[j - 1] === mark)) {
      continue;
    }
    if (mark[0] === "_" && isWordChar(text[j + mark.length])) {
      continue;
    }
    return j;
  }
  return -1;
}

/** Appends ``text``'s inline markup to ``parent``: code spans, strong, emphasis, line breaks. */
export function renderInline(text, parent, doc = document) {
  let plain = "";
  const flush = () => {
    appendText(parent, plain, doc);
    plain = "";
  };
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    if (ch === "\\" && i + 1 < text.length && "\\`*_#".includes(text[i + 1])) {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    if (ch === "`") {
      const run = /^`+/.exec(text.slice(i))[0];
      const end = text.indexOf(run, i + run.length);
      if (end !== -1) {
        flush();
        const code = doc.createElement("code");
        code.textContent = text.slice(i + run.length, end);
        parent.append(code);
        i = end + run.length;
        continue;
      }
      plain += run;
      i += run.length;
      continue;
    }
    const double = text.slice(i, i + 2);
    if ((double === "**" || double === "__") && !(double === "__" && isWordChar(text[i - 1]))) {
      const end = closing(text, double, i + 2);
      if (end !== -1) {
        flush();
        const strong = doc.createElement("strong");
        renderInline(text.slice(i + 2, end), strong, doc);
        parent.append(strong);
        i = end + 2;
        continue;
      }
    }
    if ((ch === "*" || ch === "_") && text[i + 1] !== ch && !(ch === "_" && isWordChar(text[i - 1]))) {
      const end = closing(text, ch, i + 1);
      if (end !== -1) {
        flush();
        const em = doc.createElement("em");
        renderInline(text.slice(i + 1, end), em, doc);
        parent.append(em);
        i = end + 1;
        continue;
      }
    }
    plain += ch;
    i += 1;
  }
  flush();
}

function appendText(parent, text, doc) {
  const lines = text.split("\n");
  lines.forEach((line, index) => {
    if (index > 0) {
      parent.append(doc.createElement("br"));
    }
    if (line) {
      parent.append(doc.createTextNode(line));
    }
  });
}
