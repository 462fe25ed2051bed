// The view: small components that render the state to DOM, re-rendered on every dispatch
// (the structure of a React app, without a build step or downloads).
(function () {
  "use strict";
  const { createState, reducer, visible, remaining } = window.Todo;

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key.startsWith("on")) el.addEventListener(key.slice(2).toLowerCase(), value);
      else if (key === "className") el.className = value;
      else if (value === true) el.setAttribute(key, "");
      else if (value !== false) el.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) el.append(child);
    }
    return el;
  }

  let state = createState([
    { id: 1, text: "Write the todo logic", done: true },
    { id: 2, text: "Test it with node --test", done: true },
    { id: 3, text: "Show it on the desktop", done: false },
  ]);

  function dispatch(action) {
    state = reducer(state, action);
    render();
  }

  function TodoItem(item) {
    return h(
      "li",
      { className: item.done ? "done" : "" },
      h("input", {
        type: "checkbox",
        checked: item.done,
        onChange: () => dispatch({ type: "toggle", id: item.id }),
      }),
      h("span", null, item.text),
      h("button", { className: "remove", title: "Remove",
        onClick: () => dispatch({ type: "remove", id: item.id }) }, "\u00d7"),
    );
  }

  function NewTodo() {
    const input = h("input", { id: "new-todo", placeholder: "What needs to be done?" });
    const submit = (event) => {
      event.preventDefault();
      dispatch({ type: "add", text: input.value });
    };
    return h("form", { onSubmit: submit }, input, h("button", { type: "submit" }, "Add"));
  }

  function Filters() {
    return h("div", { className: "filters" }, ["all", "active", "done"].map((f) =>
      h("button", { className: state.filter === f ? "selected" : "",
        onClick: () => dispatch({ type: "filter", filter: f }) }, f)));
  }

  function App() {
    return h("main", null,
      h("h1", null, "Todos"),
      NewTodo(),
      h("ul", { id: "todo-list" }, visible(state).map(TodoItem)),
      h("footer", null, h("span", null, `${remaining(state)} left`), Filters(),
        h("button", { onClick: () => dispatch({ type: "clearDone" }) }, "clear done")));
  }

  function render() {
    document.getElementById("root").replaceChildren(App());
    document.getElementById("new-todo").focus();
  }

  render();
})();
