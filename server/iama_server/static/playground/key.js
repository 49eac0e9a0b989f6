// Store the API key for the playground (a cookie scoped to /playground) and reload.
"use strict";
const KEY_COOKIE = "iama_key";
if (document.cookie.split("; ").some((c) => c.startsWith(KEY_COOKIE + "="))) {
  document.getElementById("key-error").textContent = "That key was not accepted.";
}
document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = document.getElementById("key").value.trim();
  document.cookie = `${KEY_COOKIE}=${encodeURIComponent(key)}; path=/playground; SameSite=Strict`;
  window.location.reload();
});
