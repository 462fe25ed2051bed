const test = require("node:test");
const assert = require("node:assert/strict");
const { createState, reducer, visible, remaining } = require("./todo.js");

test("add appends a trimmed item with a fresh id", () => {
  const s = reducer(createState(), { type: "add", text: "  buy milk " });
  assert.deepEqual(s.items, [{ id: 1, text: "buy milk", done: false }]);
  assert.equal(reducer(s, { type: "add", text: "walk" }).items[1].id, 2);
});

test("add ignores blank text", () => {
  const s = createState();
  assert.equal(reducer(s, { type: "add", text: "   " }), s);
});

test("toggle and remove change only the addressed item", () => {
  let s = createState([
    { id: 1, text: "a", done: false },
    { id: 2, text: "b", done: false },
  ]);
  s = reducer(s, { type: "toggle", id: 2 });
  assert.deepEqual(s.items.map((i) => i.done), [false, true]);
  s = reducer(s, { type: "remove", id: 1 });
  assert.deepEqual(s.items.map((i) => i.text), ["b"]);
});

test("filters and the remaining count", () => {
  let s = createState([
    { id: 1, text: "a", done: true },
    { id: 2, text: "b", done: false },
  ]);
  assert.equal(remaining(s), 1);
  s = reducer(s, { type: "filter", filter: "done" });
  assert.deepEqual(visible(s).map((i) => i.id), [1]);
  s = reducer(s, { type: "clearDone" });
  assert.deepEqual(s.items.map((i) => i.id), [2]);
  assert.throws(() => reducer(s, { type: "filter", filter: "bogus" }));
});

test("the state is never mutated", () => {
  const s = Object.freeze(createState([Object.freeze({ id: 1, text: "a", done: false })]));
  reducer(s, { type: "toggle", id: 1 });
  assert.equal(s.items[0].done, false);
});
