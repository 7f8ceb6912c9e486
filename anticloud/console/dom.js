// Small builders for the page's nodes. Text goes in through textContent only: nothing here parses HTML,
// and no style is set from script.

export const $ = (id) => document.getElementById(id);

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** One row of a definition ``list``: ``label`` and ``value`` (— when missing), ``field`` as data-field. */
export function fact(list, label, value, field) {
  const dd = element("dd", "", value === undefined || value === null ? "—" : String(value));
  if (field) {
    dd.dataset.field = field;
  }
  list.append(element("dt", "", label), dd);
  return dd;
}
