import { useEffect, useRef } from "react";

interface Props {
  title: string;
  confirmLabel: string;
  onConfirm(): void;
  onCancel(): void;
}

/** A modal <dialog>: focus starts on Cancel, Escape closes it (the browser's own handling). */
export function ConfirmDialog({ title, confirmLabel, onConfirm, onCancel }: Props) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
  }, []);
  return (
    <dialog ref={ref} aria-labelledby="confirm-title" onCancel={(e) => { e.preventDefault(); onCancel(); }}>
      <p id="confirm-title">{title}</p>
      <div className="actions">
        <button type="button" autoFocus onClick={onCancel}>Cancel</button>
        <button type="button" className="danger" data-testid="confirm-delete" onClick={onConfirm}>{confirmLabel}</button>
      </div>
    </dialog>
  );
}
