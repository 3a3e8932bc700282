// Applied before the page paints: the colour theme and time zone the user chose (localStorage).
(function () {
  var theme = localStorage.getItem("tf.theme");
  if (!theme) theme = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  document.documentElement.dataset.theme = theme;
  document.documentElement.dataset.time = localStorage.getItem("tf.time") || "utc";
})();
