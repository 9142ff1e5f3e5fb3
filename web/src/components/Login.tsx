import { useState, type FormEvent } from "react";
import { describeError } from "../api/client";

interface Props {
  onPassword(email: string, password: string): Promise<void>;
  onToken(token: string): Promise<void>;
}

/** Sign in with email and password (an HttpOnly cookie), or paste a Supabase access token. */
export function Login({ onPassword, onToken }: Props) {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [token, setToken] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [pending, setPending] = useState(false);

  async function run(action: () => Promise<void>, event: FormEvent) {
    event.preventDefault();
    setPending(true);
    setError(null);
    try {
      await action();
    } catch (e) {
      setError(describeError(e));
    } finally {
      setPending(false);
    }
  }

  return (
    <main className="login">
      <h1>Chats</h1>
      <form onSubmit={(e) => run(() => onPassword(email, password), e)} aria-label="Sign in">
        <label>
          Email
          <input data-testid="login-email" type="email" autoComplete="username" required value={email}
                 onChange={(e) => setEmail(e.target.value)} />
        </label>
        <label>
          Password
          <input data-testid="login-password" type="password" autoComplete="current-password" required
                 value={password} onChange={(e) => setPassword(e.target.value)} />
        </label>
        <button data-testid="login-submit" type="submit" disabled={pending}>Sign in</button>
      </form>
      <form onSubmit={(e) => run(() => onToken(token.trim()), e)} aria-label="Use an access token">
        <label>
          Or paste a Supabase access token
          <textarea data-testid="login-token" rows={3} required value={token} onChange={(e) => setToken(e.target.value)} />
        </label>
        <button data-testid="login-token-submit" type="submit" disabled={pending}>Use token</button>
      </form>
      {error && <p role="alert" className="error" data-testid="error-banner">{error}</p>}
    </main>
  );
}
