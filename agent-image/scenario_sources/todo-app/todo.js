// State of the todo app as pure functions: every action returns a new state, like a React reducer.
(function (root) {
  "use strict";

  function createState(items) {
    const list = items || [];
    const nextId = list.reduce((max, item) => Math.max(max, item.id), 0) + 1;
    return { items: list, nextId, filter: "all" };
  }

  function reducer(state, action) {
    switch (action.type) {
      case "add": {
        const text = String(action.text || "").trim();
        if (!text) return state;
        const item = { id: state.nextId, text, done: false };
        return { ...state, items: [...state.items, item], nextId: state.nextId + 1 };
      }
      case "toggle":
        return {
          ...state,
          items: state.items.map((i) => (i.id === action.id ? { ...i, done: !i.done } : i)),
        };
      case "remove":
        return { ...state, items: state.items.filter((i) => i.id !== action.id) };
      case "clearDone":
        return { ...state, items: state.items.filter((i) => !i.done) };
      case "filter":
        if (!["all", "active", "done"].includes(action.filter)) {
          throw new Error("unknown filter " + action.filter);
        }
        return { ...state, filter: action.filter };
      default:
        throw new Error("unknown action " + action.type);
    }
  }

  function visible(state) {
    if (state.filter === "active") return state.items.filter((i) => !i.done);
    if (state.filter === "done") return state.items.filter((i) => i.done);
    return state.items;
  }

  function remaining(state) {
    return state.items.filter((i) => !i.done).length;
  }

  const api = { createState, reducer, visible, remaining };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.Todo = api;
})(this);
