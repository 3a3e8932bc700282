// The login form: the key opens a session (POST /api/v1/session sets an HttpOnly cookie).
document.getElementById("login-form").addEventListener("submit", async function (event) {
  event.preventDefault();
  var key = document.getElementById("key").value.trim();
  var error = document.getElementById("login-error");
  error.textContent = "";
  var response = await fetch("/api/v1/session", {
    method: "POST", headers: { Authorization: "Bearer " + key }, credentials: "same-origin",
  });
  if (!response.ok) {
    var body = await response.json().catch(function () { return {}; });
    error.textContent = "Not logged in: " + (body.detail || response.statusText);
    return;
  }
  var next = new URLSearchParams(location.search).get("next") || "/";
  location.assign(next.startsWith("/") && !next.startsWith("//") ? next : "/");
});
