; DDPM Studio installer for Windows (NSIS 3.x).
;
; Packs the one-folder bundle that packaging/ddpm-gui.spec builds on Windows (dist\ddpm-gui\ with
; ddpm-gui.exe, its console twin ddpm-gui-cli.exe, and _internal\). Run from the repository root:
;
;   makensis /DVERSION=0.1.0 packaging\windows\ddpm-gui.nsi
;
; (packaging\windows\build.ps1 does the whole thing: bundle, self-test, icon, installer.)
; Output: dist\ddpm-gui-<version>-setup.exe. Installs per user (no administrator rights) into
; %LOCALAPPDATA%\Programs\DDPM Studio, adds a Start menu shortcut and an entry in "Installed apps"
; with an uninstaller. NOT BUILT OR TESTED on the Linux machine where this project is developed.

Unicode true
ManifestDPIAware true
SetCompressor /SOLID lzma
SetCompressorDictSize 64

!include "MUI2.nsh"
!include "FileFunc.nsh"

!ifndef VERSION
  !define VERSION "0.1.0"
!endif
!define APPNAME "DDPM Studio"
!define EXE "ddpm-gui.exe"
!define UNINST_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\ddpm-gui"
; paths are relative to this script's folder
!define SRCDIR "..\..\dist\ddpm-gui"
!ifndef ICON
  !define ICON "..\..\build\ddpm-gui.ico"
!endif

!if ! /FileExists "${SRCDIR}\${EXE}"
  !error "No bundle at ${SRCDIR}: build it first (pyinstaller packaging\ddpm-gui.spec)"
!endif

Name "${APPNAME} ${VERSION}"
OutFile "..\..\dist\ddpm-gui-${VERSION}-setup.exe"
InstallDir "$LOCALAPPDATA\Programs\${APPNAME}"
InstallDirRegKey HKCU "${UNINST_KEY}" "InstallLocation"
RequestExecutionLevel user
BrandingText "${APPNAME} ${VERSION}"
VIProductVersion "${VERSION}.0"
VIAddVersionKey "ProductName" "${APPNAME}"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "FileDescription" "${APPNAME} installer"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "LegalCopyright" "MIT licence"

!if /FileExists "${ICON}"
  !define MUI_ICON "${ICON}"
  !define MUI_UNICON "${ICON}"
!endif
!define MUI_ABORTWARNING
!define MUI_FINISHPAGE_RUN "$INSTDIR\${EXE}"
!define MUI_FINISHPAGE_RUN_TEXT "Start ${APPNAME}"

!insertmacro MUI_PAGE_WELCOME
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

Section "DDPM Studio" SecMain
  SectionIn RO
  ; an older copy's _internal may hold files this version no longer ships
  RMDir /r "$INSTDIR\_internal"
  SetOutPath "$INSTDIR"
  File /r "${SRCDIR}\*.*"
  WriteUninstaller "$INSTDIR\Uninstall.exe"

  CreateShortcut "$SMPROGRAMS\${APPNAME}.lnk" "$INSTDIR\${EXE}" "" "$INSTDIR\${EXE}" 0

  ${GetSize} "$INSTDIR" "/S=0K" $0 $1 $2
  IntFmt $0 "0x%08X" $0
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayName" "${APPNAME}"
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINST_KEY}" "Publisher" "${APPNAME}"
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayIcon" "$INSTDIR\${EXE}"
  WriteRegStr HKCU "${UNINST_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINST_KEY}" "UninstallString" '"$INSTDIR\Uninstall.exe"'
  WriteRegStr HKCU "${UNINST_KEY}" "QuietUninstallString" '"$INSTDIR\Uninstall.exe" /S'
  WriteRegDWORD HKCU "${UNINST_KEY}" "EstimatedSize" $0
  WriteRegDWORD HKCU "${UNINST_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINST_KEY}" "NoRepair" 1
SectionEnd

Section "Uninstall"
  ; only what the installer put there: never RMDir /r "$INSTDIR" (it may be a folder the user chose)
  Delete "$SMPROGRAMS\${APPNAME}.lnk"
  RMDir /r "$INSTDIR\_internal"
  Delete "$INSTDIR\ddpm-gui.exe"
  Delete "$INSTDIR\ddpm-gui-cli.exe"
  Delete "$INSTDIR\Uninstall.exe"
  RMDir "$INSTDIR"
  DeleteRegKey HKCU "${UNINST_KEY}"
SectionEnd
